"""Pendulum-v1 (Box actions) with rl-zoo3's PPO settings: mmrl vs Stable-Baselines3, side by side.

Both runners use the same hyperparameters (rl-zoo3's hyperparams/ppo.yml for Pendulum-v1: 4 envs,
n_steps 1024, batch 64, 10 epochs, gamma 0.9, lambda 0.95, lr 1e-3, clip 0.2, no entropy bonus,
100k steps) *without* state-dependent exploration (mmrl has none, so SB3 runs with
``use_sde=False`` too), the same network (64-64 tanh, separate actor and critic, a
state-independent log std starting at 0) and one torch thread each. Actions: a diagonal Gaussian
clipped to the bounds on both sides. mmrl runs through its CLI (`mmrl train exp=pendulum-ppo`),
its wall time including its periodic evaluations; SB3's time is `model.learn` alone.
Evaluation: mean return of the deterministic (mean) action over 20 episodes on seeds training
never used.

    python scripts/bench_pendulum.py [--seeds 1 2 3] [--out docs/bench/pendulum.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, mmrl_train, print_table, write_json

STEPS = 100_000
SB3_KWARGS = dict(n_steps=1024, batch_size=64, n_epochs=10, gamma=0.9, gae_lambda=0.95, learning_rate=1e-3,
                  clip_range=0.2, ent_coef=0.0, use_sde=False)


def sb3_run(seed: int) -> dict:
    """Stable-Baselines3's PPO on Pendulum-v1 with the shared settings."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=seed)
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_KWARGS)
    start = time.perf_counter()
    model.learn(STEPS)
    wall = time.perf_counter() - start
    mean, _ = evaluate_policy(model, make_vec_env("Pendulum-v1", n_envs=4, seed=seed + 10**6), n_eval_episodes=20)
    return {"seed": seed, "eval_return": float(mean), "wall_seconds": wall, "steps_per_second": STEPS / wall}


def mmrl_run(seed: int, runs_root: Path) -> dict:
    """`mmrl train exp=pendulum-ppo` as a user would run it."""
    s = mmrl_train(["exp=pendulum-ppo", f"seed={seed}", "hardware.threads=1"], runs_root)
    return {"seed": seed, "eval_return": s["heldout_return"], "wall_seconds": s["wall_seconds"],
            "steps_per_second": s["steps_per_second"], "run_dir": s["run_dir"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/pendulum.json")
    args = parser.parse_args()
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-"))
    runners = {"mmrl ppo (Gaussian, clipped)": lambda s: mmrl_run(s, runs_root),
               "stable-baselines3 ppo (no gSDE)": sb3_run}
    runs = {name: [] for name in runners}
    for seed in args.seeds:  # interleaved, so machine noise hits both alike
        for name, run in runners.items():
            runs[name].append(run(seed))
    peer = runs["stable-baselines3 ppo (no gSDE)"]
    peer_sps = sum(r["steps_per_second"] for r in peer) / len(peer)
    peer_return = sum(r["eval_return"] for r in peer) / len(peer)
    summary, rows = {}, []
    for name, variant_runs in runs.items():
        mean_return = sum(r["eval_return"] for r in variant_runs) / len(variant_runs)
        mean_sps = sum(r["steps_per_second"] for r in variant_runs) / len(variant_runs)
        summary[name] = {"mean_eval_return": mean_return, "eval_returns": [r["eval_return"] for r in variant_runs],
                         "mean_steps_per_second": mean_sps, "speedup_vs_sb3": mean_sps / peer_sps,
                         "return_minus_sb3": mean_return - peer_return}
        rows.append([name, mean_return, " ".join(f"{r['eval_return']:.0f}" for r in variant_runs), mean_sps,
                     mean_sps / peer_sps])
    print_table(f"Pendulum-v1, rl-zoo3 PPO settings without gSDE, {STEPS:,} steps, seeds {args.seeds}",
                ["runner", "mean eval return", "per seed", "steps/s", "x SB3 steps/s"], rows)
    write_json(args.out, {"runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
