"""CartPole-v1 with rl-zoo3's tuned PPO: mmrl vs Stable-Baselines3, side by side in one run.

Both use the same hyperparameters (n_envs 8, n_steps 32, batch 256, 20 epochs, gamma 0.98,
lambda 0.8, lr lin 1e-3, clip lin 0.2, 100k steps), the same network (64-64 tanh, separate
actor and critic) and one torch thread each. mmrl runs through its CLI exactly as a user
would (`mmrl train data=cartpole model=mlp`), its wall time including its periodic
evaluations; SB3's time is `model.learn` alone. Evaluation: mean return over 32 episodes.

    python scripts/bench_cartpole.py [--seeds 1 2 3] [--out docs/bench/cartpole.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, mmrl_train, print_table, write_json

HYPER = dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8, ent_coef=0.0)


def sb3_run(seed: int, steps: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, learning_rate=lambda p: 1e-3 * p, clip_range=lambda p: 0.2 * p,
                seed=seed, device="cpu", verbose=0, **HYPER)
    start = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - start
    mean, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=8, seed=seed + 10**6), n_eval_episodes=32)
    return {"seed": seed, "eval_return": float(mean), "wall_seconds": wall, "steps_per_second": steps / wall}


def mmrl_run(seed: int, runs_root: Path, extra: list[str]) -> dict:
    s = mmrl_train(["data=cartpole", "model=mlp", f"seed={seed}", "hardware.threads=1", *extra], runs_root)
    return {"seed": seed, "eval_return": s["heldout_return"], "wall_seconds": s["wall_seconds"],
            "steps_per_second": s["steps_per_second"], "run_dir": s["run_dir"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/cartpole.json")
    args = parser.parse_args()
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-"))
    variants = {
        "mmrl (batched torch CartPole)": lambda s: mmrl_run(s, runs_root, []),
        "mmrl (gymnasium CartPole-v1)": lambda s: mmrl_run(s, runs_root, ["data.type=gym", "~data.max_steps", "+data.env_id=CartPole-v1"]),
        "stable-baselines3": lambda s: sb3_run(s, 100_000),
    }
    results = {name: [] for name in variants}
    for seed in args.seeds:  # interleaved, so machine noise hits every variant alike
        for name, run in variants.items():
            results[name].append(run(seed))
    sb3_sps = sum(r["steps_per_second"] for r in results["stable-baselines3"]) / len(args.seeds)
    rows, summary = [], {}
    for name, runs in results.items():
        mean_return = sum(r["eval_return"] for r in runs) / len(runs)
        mean_sps = sum(r["steps_per_second"] for r in runs) / len(runs)
        # each seed against SB3's run of the same seed (run right after it)
        per_seed = [r["steps_per_second"] / peer["steps_per_second"] for r, peer in zip(runs, results["stable-baselines3"])]
        summary[name] = {"mean_eval_return": mean_return, "min_eval_return": min(r["eval_return"] for r in runs),
                         "mean_steps_per_second": mean_sps, "speedup_vs_sb3": mean_sps / sb3_sps,
                         "speedup_vs_sb3_per_seed": per_seed}
        rows.append([name, mean_return, min(r["eval_return"] for r in runs), mean_sps, mean_sps / sb3_sps,
                     " ".join(f"{x:.2f}" for x in per_seed)])
    print_table(f"CartPole-v1, PPO rl-zoo3 settings, 100k steps, seeds {args.seeds}",
                ["runner", "mean eval return", "worst seed", "steps/s", "x SB3", "x SB3 per seed"], rows)
    write_json(args.out, {"runs": results, "summary": summary})


if __name__ == "__main__":
    main()
