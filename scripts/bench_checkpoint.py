"""What checkpoints cost on the default `mmrl train` config: size, save and load time, and the
training throughput with a checkpoint after every update vs only at the end (same process,
back to back, so the ratio is fair).

    python scripts/bench_checkpoint.py [--updates 24]

Writes docs/bench/checkpoint.json.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _common import ROOT, print_table, write_json
from hydra import compose, initialize_config_dir

from mmrl_cli import trainer
from mmrl_cli.builders import build_env_and_policy
from mmrl_cli.checkpoint import find_checkpoint, load_model, load_state
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import validate


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(compose("train", overrides=list(overrides)))


def timed_saves(samples: list[float]):
    """Wrap the trainer's save_checkpoint so each call's wall time lands in `samples`."""
    real = trainer.save_checkpoint

    def save(*args, **kwargs):
        start = time.perf_counter()
        result = real(*args, **kwargs)
        samples.append(time.perf_counter() - start)
        return result

    return save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=24, help="updates per training run")
    args = parser.parse_args()
    base = [f"algo.total_steps={args.updates * 128 * 16}", "eval.episodes=16", "monitor.progress=false",
            "monitor.tensorboard=false", "checkpoint.keep_last=3"]
    work = Path(tempfile.mkdtemp(prefix="mmrl-bench-ckpt-"))
    results = {}
    try:
        for label, every in (("end only", 10**6), ("every update", 1), ("end only (again)", 10**6)):
            samples: list[float] = []
            trainer.save_checkpoint = timed_saves(samples)
            run_dir = work / label.replace(" ", "-").replace("(", "").replace(")", "")
            run_dir.mkdir()
            summary = trainer.train(config(*base, f"checkpoint.every_updates={every}"), run_dir)
            results[label] = {"steps_per_second": summary["steps_per_second"], "saves": len(samples),
                              "save_seconds_mean": sum(samples) / len(samples)}
        checkpoint, _ = find_checkpoint(run_dir)
        size = sum(f.stat().st_size for f in checkpoint.iterdir())
        cfg = config(*base)
        _, policy = build_env_and_policy(cfg, 1, torch.device("cpu"))
        start = time.perf_counter()
        for _ in range(5):
            found, _ = find_checkpoint(run_dir)  # verifies SHA-256 and headers
            load_state(found)
            load_model(found / "model.safetensors", policy)
        load_seconds = (time.perf_counter() - start) / 5
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end_only = (results["end only"]["steps_per_second"] + results["end only (again)"]["steps_per_second"]) / 2
    every = results["every update"]["steps_per_second"]
    rows = [[label, r["steps_per_second"], r["saves"], r["save_seconds_mean"] * 1000] for label, r in results.items()]
    print_table("training with checkpoints (default goto config)", ["checkpoints", "steps/s", "saves", "ms per save"], rows)
    print_table("one checkpoint", ["size (MB)", "verify + load (ms)", "throughput every update / end only"],
                [[size / 1e6, load_seconds * 1000, every / end_only]])
    write_json(ROOT / "docs" / "bench" / "checkpoint.json", {
        "command": "python scripts/bench_checkpoint.py " + f"--updates {args.updates}",
        "runs": results, "checkpoint_bytes": size, "verify_and_load_seconds": load_seconds,
        "throughput_ratio_every_update_vs_end_only": every / end_only,
    })


if __name__ == "__main__":
    main()
