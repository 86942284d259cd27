"""CartPole-v1 with rl-zoo3's tuned PPO and A2C: mmrl vs Stable-Baselines3, side by side in one run.

Both runners use the same hyperparameters and the same network (64-64 tanh, separate actor and
critic), one torch thread each:
- PPO (hyperparams/ppo.yml): 8 envs, n_steps 32, batch 256, 20 epochs, gamma 0.98, lambda 0.8,
  lr lin 1e-3, clip lin 0.2, 100k steps;
- A2C (hyperparams/a2c.yml): 8 envs, 500k steps, no entropy bonus, SB3's other defaults
  (RMSprop lr 7e-4, 5 steps, gamma 0.99, n-step returns, vf_coef 0.5, max_grad_norm 0.5).
mmrl runs through its CLI exactly as a user would (`mmrl train exp=cartpole-ppo`), its wall time
including its periodic evaluations; SB3's time is `model.learn` alone. Evaluation: mean return
over 32 episodes on seeds training never used. `hardware.fast_path=false` variants measure what
the MLP fast path buys (plain autograd and `optimizer.step()` for every step).

    python scripts/bench_cartpole.py [--seeds 1 2 3] [--algos ppo a2c] [--out docs/bench/cartpole.json]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from _common import ROOT, mmrl_train, print_table, write_json

SB3_SETTINGS = {
    "ppo": dict(n_envs=8, steps=100_000, kwargs=dict(n_steps=32, batch_size=256, n_epochs=20, gamma=0.98, gae_lambda=0.8,
                                                     ent_coef=0.0, learning_rate=lambda p: 1e-3 * p,
                                                     clip_range=lambda p: 0.2 * p)),
    "a2c": dict(n_envs=8, steps=500_000, kwargs=dict(ent_coef=0.0)),
}


def sb3_run(algo: str, seed: int) -> dict:
    import stable_baselines3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)
    settings = SB3_SETTINGS[algo]
    env = make_vec_env("CartPole-v1", n_envs=settings["n_envs"], seed=seed)
    model = getattr(stable_baselines3, algo.upper())("MlpPolicy", env, seed=seed, device="cpu", verbose=0,
                                                     **settings["kwargs"])
    start = time.perf_counter()
    model.learn(settings["steps"])
    wall = time.perf_counter() - start
    mean, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=8, seed=seed + 10**6), n_eval_episodes=32)
    return {"seed": seed, "eval_return": float(mean), "wall_seconds": wall, "steps_per_second": settings["steps"] / wall}


def mmrl_run(seed: int, runs_root: Path, overrides: list[str]) -> dict:
    s = mmrl_train([*overrides, f"seed={seed}", "hardware.threads=1"], runs_root)
    return {"seed": seed, "eval_return": s["heldout_return"], "wall_seconds": s["wall_seconds"],
            "steps_per_second": s["steps_per_second"], "run_dir": s["run_dir"]}


def variants(algo: str, runs_root: Path) -> dict:
    """The runners compared for one algorithm; the last one is the peer the ratios are taken against."""
    exp = f"exp=cartpole-{algo}"
    gym_env = ["data=gym", "data.env_id=CartPole-v1"]
    return {
        f"mmrl {algo} (batched torch CartPole)": lambda s: mmrl_run(s, runs_root, [exp]),
        f"mmrl {algo}, fast path off (plain autograd)": lambda s: mmrl_run(s, runs_root, [exp, "hardware.fast_path=false"]),
        f"mmrl {algo} (gymnasium CartPole-v1)": lambda s: mmrl_run(s, runs_root, [exp, *gym_env]),
        f"stable-baselines3 {algo}": lambda s: sb3_run(algo, s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--algos", nargs="+", default=["ppo", "a2c"], choices=["ppo", "a2c"])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/cartpole.json")
    args = parser.parse_args()
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-"))
    results, summary, rows = {}, {}, []
    for algo in args.algos:
        runners = variants(algo, runs_root)
        runs = {name: [] for name in runners}
        for seed in args.seeds:  # interleaved, so machine noise hits every variant alike
            for name, run in runners.items():
                runs[name].append(run(seed))
        peer = runs[f"stable-baselines3 {algo}"]
        peer_sps = sum(r["steps_per_second"] for r in peer) / len(peer)
        for name, variant_runs in runs.items():
            mean_return = sum(r["eval_return"] for r in variant_runs) / len(variant_runs)
            mean_sps = sum(r["steps_per_second"] for r in variant_runs) / len(variant_runs)
            # each seed against the peer's run of the same seed (run right after it)
            per_seed = [r["steps_per_second"] / p["steps_per_second"] for r, p in zip(variant_runs, peer)]
            worst = min(r["eval_return"] for r in variant_runs)
            summary[name] = {"mean_eval_return": mean_return, "min_eval_return": worst, "mean_steps_per_second": mean_sps,
                             "speedup_vs_sb3": mean_sps / peer_sps, "speedup_vs_sb3_per_seed": per_seed}
            rows.append([name, mean_return, worst, mean_sps, mean_sps / peer_sps, " ".join(f"{x:.2f}" for x in per_seed)])
        results.update(runs)
    print_table(f"CartPole-v1, rl-zoo3 settings, seeds {args.seeds}",
                ["runner", "mean eval return", "worst seed", "steps/s", "x SB3 (same algo)", "x SB3 per seed"], rows)
    write_json(args.out, {"runs": results, "summary": summary})


if __name__ == "__main__":
    main()
