"""GPU numbers for the scale-out issue, in one run, with the device name: the default run's
steps/s; update throughput of the ~50M-parameter `model=vit-gpt2-50m` in fp32 (TF32) eager, bf16
eager, fp32 + compile and bf16 + compile, with model FLOPs utilisation (FLOPs counted by torch's
FlopCounterMode on one step, over the device's dense peak); rollout collection (built-in env and
default policy inference, all on the GPU) at several batch sizes, eager, compiled, and compiled
with CUDA graphs (`reduce-overhead`).

Needs CUDA; `--device cpu --tiny` runs the same code at toy sizes on a CPU (a smoke test of the
script, not a benchmark). No GPU has been lent to this project yet: the numbers are to be taken.

    python scripts/bench_gpu.py [--out docs/bench/gpu.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import ROOT, mmrl_train, print_table, write_json

# Dense peak FLOP/s by device name fragment: (bf16, tf32) tensor-core peaks (NVIDIA datasheets, SXM).
PEAK_FLOPS = {"H100": (989e12, 495e12), "H200": (989e12, 495e12), "A100": (312e12, 156e12)}


def peak_for(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for `precision`, if known."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, (bf16, tf32) in PEAK_FLOPS.items():
        if fragment in name:
            return bf16 if precision == "bf16" else tf32
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(env, batch: int, device: torch.device) -> dict:
    """A PPO minibatch of real observations with made-up actions, advantages and returns."""
    obs = env.reset()
    return {"obs": obs, "actions": torch.randint(0, env.num_actions, (batch,), device=device),
            "logprobs": torch.full((batch,), -1.4, device=device), "advantages": torch.randn(batch, device=device),
            "returns": torch.randn(batch, device=device), "values": torch.randn(batch, device=device)}


def update_throughput(model: str, precision: str, compiled: bool, batch: int, steps: int, device: torch.device) -> dict:
    """Samples/s of PPO gradient steps (forward, loss, backward, clip, Adam) on `model`, and MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmrl_cli.algos.gradient import GradientStep
    from mmrl_cli.algos.ppo import ppo_loss
    from mmrl_cli.builders import autocast_for, build_env_and_policy
    from mmrl_cli.compose import compose_train_config

    cfg = compose_train_config([f"model={model}", f"hardware.device={device.type}", f"hardware.precision={precision}"])
    env, policy = build_env_and_policy(cfg, batch, device)
    autocast = autocast_for(device, precision)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = GradientStep(policy, optimizer, 0.5, autocast, fast_path=False)
    data = synthetic_batch(env, batch, device)

    def one_step() -> None:
        outputs = step.forward(data["obs"])
        step.step(ppo_loss(policy.distribution(outputs[0]), outputs[1], data, 0.2, None, True, 0.5, 0.01), outputs)

    with FlopCounterMode(display=False) as counter:  # eager, before compiling: the model's own FLOPs
        one_step()
    flops = counter.get_total_flops()
    if compiled:
        policy.compile()
    for _ in range(3):  # warm-up (and compilation)
        one_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    seconds = time.perf_counter() - start
    peak = peak_for(device, precision)
    return {"samples_per_second": batch * steps / seconds, "flops_per_step": flops,
            "mfu": flops * steps / seconds / peak if peak else None,
            "parameters": sum(p.numel() for p in policy.parameters())}


def rollout_throughput(batch: int, n_steps: int, rollouts: int, mode: str | None, device: torch.device) -> float:
    """Env steps/s of rollout collection: the built-in env and the default policy, all on `device`."""
    from mmrl_cli.builders import autocast_for, build_env_and_policy
    from mmrl_cli.compose import compose_train_config
    from mmrl_cli.rollout import Collector

    cfg = compose_train_config([f"hardware.device={device.type}", "hardware.precision=bf16" if device.type == "cuda"
                                else "hardware.precision=fp32"])
    env, policy = build_env_and_policy(cfg, batch, device)
    if mode is not None:
        policy.compile(mode=mode)
    collector = Collector(env, policy, n_steps, device, 0, autocast_for(device, cfg.hardware.precision))
    for _ in range(2):
        collector.collect()
    sync(device)
    start = time.perf_counter()
    for _ in range(rollouts):
        collector.collect()
    sync(device)
    return batch * n_steps * rollouts / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a smoke test of this script on a CPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/gpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py: no CUDA device here (use --device cpu --tiny for a smoke test)")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict = {"device": name}

    run = mmrl_train([f"hardware.device={device.type}", f"total_steps={20_000 if args.tiny else 2_000_000}",
                      "eval.every_steps=100000000", "eval.episodes=50"] + (["rollout.n_envs=16", "algo.batch_size=128"] if args.tiny else []),
                     Path("/tmp/mmrl-bench-gpu-runs"))
    results["default_run_steps_per_second"] = run["train_steps_per_second"]
    print_table(f"default `mmrl train` on {name}", ["steps/s (training)", "held-out success"],
                [[run["train_steps_per_second"], run["heldout_success_rate"]]])

    model, batch, steps = ("vit-gpt2", 64, 3) if args.tiny else ("vit-gpt2-50m", 2048, 20)
    rows, updates = [], {}
    for precision, compiled in (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)):
        label = f"{precision}{' + compile' if compiled else ' eager'}"
        updates[label] = update_throughput(model, precision, compiled, batch, steps, device)
    base = updates["fp32 eager"]["samples_per_second"]
    for label, r in updates.items():
        rows.append([label, r["samples_per_second"], r["samples_per_second"] / base,
                     f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"])
    results["update"] = {"model": model, "batch": batch, **updates,
                         "bf16_compile_over_fp32_eager": updates["bf16 + compile"]["samples_per_second"] / base}
    print_table(f"PPO update throughput, model={model} ({updates['fp32 eager']['parameters'] / 1e6:.1f}M params), "
                f"minibatch {batch}", ["precision", "samples/s", "x fp32 eager", "MFU"], rows)

    rows, rollouts = [], {}
    for batch_envs in ((16,) if args.tiny else (4096, 16384, 65536)):
        for label, mode in (("eager", None), ("compile", "default"), ("compile + CUDA graphs", "reduce-overhead")):
            if mode == "reduce-overhead" and device.type != "cuda":
                continue
            sps = rollout_throughput(batch_envs, 16, 2 if args.tiny else 10, mode, device)
            rollouts[f"{batch_envs} envs, {label}"] = sps
            rows.append([batch_envs, label, sps])
    results["rollout"] = rollouts
    print_table("rollout collection (built-in goto env + default policy, all on the device)",
                ["envs", "policy", "env steps/s"], rows)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
