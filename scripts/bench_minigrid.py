"""MiniGrid/BabyAI: mmrl vs Stable-Baselines3 side by side, and mmrl's transformer policy.

Part 1 (`--part cnn`): MiniGrid-DoorKey-5x5-v0 and MiniGrid-Empty-8x8-v0, seeds 1-3, 200k steps,
the same PPO hyperparameters on both sides (8 envs x 128 steps, batch 256, 4 epochs, lr 1e-3,
gamma 0.99, lambda 0.95, clip 0.2, entropy 0.01; SB3's defaults otherwise: vf 0.5, grad clip
0.5, Adam eps 1e-5). mmrl: `mmrl train exp=minigrid-ppo` (CNN over the raw symbolic view +
direction; these envs' missions are constant, so left out). SB3: the MiniGrid docs' recipe (`ImgObsWrapper`, a 3-layer 2x2 CNN
over the raw symbolic view, `normalize_images=False`, 128 features, SB3's 64-64 heads). Each
mmrl run is paired with the SB3 run of the same env and seed, the two running at the same time
on the two cores (one torch thread each), so both see the same machine load. Success: held-out
episodes (env seeds neither trained on), MiniGrid's rule (terminated with a positive reward),
with argmax actions (the headline, as SB3's `evaluate_policy(deterministic=True)`) and with
sampled actions (rl-starter-files' default; an argmax policy can loop forever where the
sampled one does not). Steps/s: SB3's `model.learn` alone; mmrl's training time without its
periodic evaluations (`train_steps_per_second`), and the whole run's too.

Part 2 (`--part transformer`): the default transformer policy through `exp=minigrid-vit`
(`model=vit-gpt2` with actor and critic MLPs of their own, exp=minigrid-ppo's PPO settings, the
learning rate annealed linearly), 300k steps, on both envs (`--envs` for others, e.g. a BabyAI
level); reports the first step at which validation success reached 0.9 and the held-out success
at the end.

Part 3 (`--part babyai`): a BabyAI level with a real instruction (GoToLocalS6N4 by default),
`exp=minigrid-ppo` (the CNN with the mission as a bag of words; `--exp minigrid-vit` for the
transformer), 500k steps, 3 seeds: the step and the number of training episodes at which
validation success first reached 0.9 (the BabyAI paper counts episodes), and held-out success.
`--bc-demos N` warm-starts each run from behaviour cloning: `mmrl demos` records N episodes of
minigrid's BabyAI bot (env seeds seed*100,000 on, so every seed has its own demos), `mmrl train
algo=bc` (`--bc-updates` gradient steps, entropy bonus 0.02) fits the same preset's policy to
them, and the RL run starts from it (`init_from`) for `--steps` minus the demos' transitions:
the bot's env steps count, so the total equals the runs without demos.

Part 4 (`--part speed`): the instruction path's cost. BabyAI-GoToRedBallGrey-v0 (a varying
mission, so mmrl feeds it: bag of words beside the CNN), `exp=minigrid-ppo` against SB3 with the
same CNN and PPO settings (SB3 sees the image alone), 50k steps, paired runs as in part 1;
training steps/s of each and their ratio.

    python scripts/bench_minigrid.py --part cnn [--seeds 1 2 3] [--out docs/bench/minigrid.json]
    python scripts/bench_minigrid.py --part speed [--steps 50000] [--out docs/bench/minigrid_speed.json]
    python scripts/bench_minigrid.py --part transformer [--envs ...] [--out docs/bench/minigrid_vit.json]
    python scripts/bench_minigrid.py --part babyai [--exp minigrid-vit] [--out docs/bench/babyai_<exp>.json]
    python scripts/bench_minigrid.py --part babyai --exp minigrid-vit --bc-demos 3000 --bc-updates 3000 --envs BabyAI-GoToRedBallGrey-v0 --steps 100000
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import ROOT, mmrl_train, print_table, run_mmrl, write_json

CNN_ENVS = ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-Empty-8x8-v0"]
TRANSFORMER_ENVS = ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-Empty-8x8-v0"]
BABYAI_ENVS = ["BabyAI-GoToLocalS6N4-v0"]  # "go to the <colour> <object>" among 4 objects, a new one every episode
EVAL_EPISODES = 100
# The model of each preset, for its behaviour cloning run (a preset's PPO settings do not apply to algo=bc).
BC_MODEL = {"minigrid-vit": ["model=vit-gpt2", "model.separate_heads=true"], "minigrid-ppo": ["model=cnn-minigrid"]}
HELDOUT_SEED_OFFSET = 2_000_000  # mmrl's held-out env seeds: seed + 2,000,000 (envs.SPLIT_SEED_OFFSETS)


def sb3_run(env_id: str, seed: int, steps: int) -> dict:
    """Stable-Baselines3 PPO with the MiniGrid docs' small CNN; success on held-out seeds."""
    import numpy as np
    import torch
    from torch import nn
    import minigrid  # noqa: F401  (registers the envs)
    from minigrid.wrappers import ImgObsWrapper
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    torch.set_num_threads(1)

    class MinigridFeatures(BaseFeaturesExtractor):
        def __init__(self, observation_space, features_dim: int = 128):
            super().__init__(observation_space, features_dim)
            channels = observation_space.shape[0]
            self.cnn = nn.Sequential(
                nn.Conv2d(channels, 16, (2, 2)), nn.ReLU(), nn.Conv2d(16, 32, (2, 2)), nn.ReLU(),
                nn.Conv2d(32, 64, (2, 2)), nn.ReLU(), nn.Flatten(),
            )
            with torch.no_grad():
                n_flatten = self.cnn(torch.as_tensor(observation_space.sample()[None]).float()).shape[1]
            self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

        def forward(self, observations):
            return self.linear(self.cnn(observations))

    env = make_vec_env(env_id, n_envs=8, seed=seed, wrapper_class=ImgObsWrapper)
    model = PPO("CnnPolicy", env, n_steps=128, batch_size=256, n_epochs=4, learning_rate=1e-3, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, ent_coef=0.01, seed=seed, device="cpu", verbose=0,
                policy_kwargs=dict(features_extractor_class=MinigridFeatures,
                                   features_extractor_kwargs=dict(features_dim=128), normalize_images=False))
    start = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - start
    eval_env = make_vec_env(env_id, n_envs=8, seed=seed + HELDOUT_SEED_OFFSET, wrapper_class=ImgObsWrapper)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True,
                                 return_episode_rewards=True)
    eval_env = make_vec_env(env_id, n_envs=8, seed=seed + HELDOUT_SEED_OFFSET, wrapper_class=ImgObsWrapper)
    sampled, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=False,
                                 return_episode_rewards=True)
    return {"runner": "sb3", "env": env_id, "seed": seed, "heldout_success": float(np.mean(np.array(returns) > 0)),
            "heldout_success_sampled": float(np.mean(np.array(sampled) > 0)),
            "heldout_return": float(np.mean(returns)), "wall_seconds": wall, "train_steps_per_second": steps / wall,
            "steps_per_second": steps / wall}


def bc_warm_start(env_id: str, seed: int, episodes: int, updates: int, root: Path, exp: str, threads: int) -> dict:
    """`mmrl demos data=gym` (the BabyAI bot, `episodes` episodes from env seed seed*100,000; the
    presets use data=gym as it is) and `mmrl train algo=bc` of the preset's policy on them: the BC
    run's directory and what it cost."""
    demos = root / "demos"
    start = time.perf_counter()
    run_mmrl("demos", "data=gym", f"data.env_id={env_id}", f"episodes={episodes}", f"seed={seed * 100_000}",
             f"runs_root={root}", f"out={demos}", "progress=false")
    demo_seconds = time.perf_counter() - start
    totals = json.loads((demos / "manifest.json").read_text())["totals"]
    s = mmrl_train(["data=gym", *BC_MODEL[exp], "algo=bc", f"algo.demos={demos}", f"algo.updates={updates}", "algo.ent_coef=0.02",
                    f"algo.eval_every_updates={updates}", f"data.env_id={env_id}", f"seed={seed}",
                    f"hardware.threads={threads}", f"eval.episodes={EVAL_EPISODES}", "monitor.tensorboard=false",
                    f"checkpoint.every_updates={updates}"], root / "bc")
    return {"run_dir": s["run_dir"], "demo_episodes": totals["episodes"], "demo_transitions": totals["transitions"],
            "expert_success_rate": totals["success_rate"], "demo_seconds": demo_seconds,
            "bc_seconds": s["wall_seconds"], "bc_heldout_success": s["heldout_success_rate"]}


def mmrl_run(env_id: str, seed: int, steps: int, runs_root: Path, extra: list[str], threads: int = 1,
             exp: str = "minigrid-ppo", bc_demos: int = 0, bc_updates: int = 0) -> dict:
    """`mmrl train exp=<exp>` as a user would run it (in its own runs root: runs go in parallel);
    with `bc_demos`, warm-started from behaviour cloning on that many bot episodes, whose env steps
    come out of `steps`."""
    own_root = runs_root / f"{env_id}-seed{seed}-{exp}-{'-'.join(extra).replace('=', '_')}"
    bc = bc_warm_start(env_id, seed, bc_demos, bc_updates, own_root, exp, threads) if bc_demos else None
    demo_steps = bc["demo_transitions"] if bc else 0  # the bot's env steps count against the budget
    s = mmrl_train([f"exp={exp}", f"data.env_id={env_id}", f"total_steps={steps - demo_steps}", f"seed={seed}",
                    f"hardware.threads={threads}", f"eval.episodes={EVAL_EPISODES}", *extra,
                    *([f"init_from={bc['run_dir']}"] if bc else [])], own_root / "rl")
    sampled = mmrl_eval_sampled(Path(s["run_dir"]), threads)
    first = next((e for e in s["evaluations"] if (e["validation"]["success_rate"] or 0) >= 0.9), {})
    return {"runner": "mmrl", "env": env_id, "seed": seed, "heldout_success": s["heldout_success_rate"],
            "heldout_return": s["heldout_return"], "wall_seconds": s["wall_seconds"],
            "train_steps_per_second": s["train_steps_per_second"], "steps_per_second": s["steps_per_second"],
            "heldout_success_sampled": sampled,
            "first_step_validation_0.9": first["step"] + demo_steps if first else None,
            "episodes_to_validation_0.9": first.get("episodes"), "validation_curve":
            [e["validation"]["success_rate"] for e in s["evaluations"]], "steps": s["steps"], "episodes": s.get("episodes"),
            "run_dir": s["run_dir"], "bc_warm_start": bc,
            "env_steps_total": s["steps"] + demo_steps}


def mmrl_eval_sampled(run_dir: Path, threads: int) -> float:
    """`mmrl eval` of the final checkpoint on held-out seeds with sampled (not argmax) actions."""
    run_mmrl("eval", f"run={run_dir}", "deterministic=false", f"episodes={EVAL_EPISODES}", "gif.episodes=0",
             f"hardware.threads={threads}")
    return json.loads((run_dir / "eval" / "results.json").read_text())["success_rate"]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def part_cnn(args, runs_root: Path) -> dict:
    jobs = []
    with ProcessPoolExecutor(2) as pool:  # the pair (mmrl, SB3) of one env and seed runs at the same time
        for env_id in args.envs or CNN_ENVS:
            for seed in args.seeds:
                jobs.append(pool.submit(mmrl_run, env_id, seed, args.steps, runs_root, []))
                jobs.append(pool.submit(sb3_run, env_id, seed, args.steps))
        results = [job.result() for job in jobs]
    rows, summary = [], {}
    for env_id in args.envs or CNN_ENVS:
        by = {r: [x for x in results if x["env"] == env_id and x["runner"] == r] for r in ("mmrl", "sb3")}
        for seed in args.seeds:
            m, s = (next(x for x in by[r] if x["seed"] == seed) for r in ("mmrl", "sb3"))
            rows.append([env_id, seed, m["heldout_success"], s["heldout_success"], m["heldout_success_sampled"],
                         s["heldout_success_sampled"], m["train_steps_per_second"], s["train_steps_per_second"],
                         m["train_steps_per_second"] / s["train_steps_per_second"]])
        ms, ss = (mean([x["heldout_success"] for x in by[r]]) for r in ("mmrl", "sb3"))
        ms_sampled, ss_sampled = (mean([x["heldout_success_sampled"] for x in by[r]]) for r in ("mmrl", "sb3"))
        msps, ssps = (mean([x["train_steps_per_second"] for x in by[r]]) for r in ("mmrl", "sb3"))
        whole = mean([x["steps_per_second"] for x in by["mmrl"]])
        summary[env_id] = {"mmrl_success": ms, "sb3_success": ss, "mmrl_success_sampled": ms_sampled,
                           "sb3_success_sampled": ss_sampled, "mmrl_steps_per_second": msps,
                           "mmrl_steps_per_second_with_evaluations": whole, "sb3_steps_per_second": ssps,
                           "speed_ratio": msps / ssps}
        rows.append([f"{env_id} mean", "", ms, ss, ms_sampled, ss_sampled, msps, ssps, msps / ssps])
    print_table(f"MiniGrid, PPO {args.steps:,} steps: mmrl (CNN) vs Stable-Baselines3 (CNN), same hyperparameters",
                ["env", "seed", "mmrl success (argmax)", "SB3 success (argmax)", "mmrl success (sampled)",
                 "SB3 success (sampled)", "mmrl steps/s", "SB3 steps/s", "speed ratio"], rows)
    return {"part": "cnn", "steps": args.steps, "seeds": args.seeds, "results": results, "summary": summary}


def part_levels(args, runs_root: Path, exp: str, default_envs: list[str]) -> dict:
    """`mmrl train exp=<exp>` on each env and seed, two runs at a time; when validation first hit 0.9."""
    envs = args.envs or default_envs
    with ProcessPoolExecutor(2) as pool:
        jobs = [pool.submit(mmrl_run, env_id, seed, args.steps, runs_root, args.overrides, 1, exp, args.bc_demos,
                            args.bc_updates)
                for env_id in envs for seed in args.seeds]
        results = [job.result() for job in jobs]
    rows, summary = [], {}
    for env_id in envs:
        runs = [x for x in results if x["env"] == env_id]
        for r in runs:
            rows.append([env_id, r["seed"], r["heldout_success"], r["heldout_success_sampled"],
                         r["first_step_validation_0.9"] or "never", r["episodes_to_validation_0.9"] or "never",
                         r["wall_seconds"], r["train_steps_per_second"]])
        summary[env_id] = {"heldout_success_mean": mean([r["heldout_success"] for r in runs]),
                           "heldout_success_min": min(r["heldout_success"] for r in runs),
                           "heldout_success_sampled_mean": mean([r["heldout_success_sampled"] for r in runs]),
                           "first_step_validation_0.9": [r["first_step_validation_0.9"] for r in runs],
                           "episodes_to_validation_0.9": [r["episodes_to_validation_0.9"] for r in runs]}
    print_table(f"exp={exp}, {args.steps:,} steps", ["env", "seed", "held-out success (argmax)",
                "held-out success (sampled)", "first step with validation >= 0.9", "training episodes by then",
                "wall s", "steps/s (training)"], rows)
    return {"part": args.part, "exp": exp, "steps": args.steps, "seeds": args.seeds, "overrides": args.overrides,
            "bc_demos": args.bc_demos, "bc_updates": args.bc_updates,
            "results": results, "summary": summary}


def part_speed(args, runs_root: Path) -> dict:
    """mmrl (exp=minigrid-ppo, mission fed) and SB3 (image only) on GoToRedBallGrey, paired, training steps/s."""
    env_id = (args.envs or ["BabyAI-GoToRedBallGrey-v0"])[0]
    with ProcessPoolExecutor(2) as pool:
        pairs = [(pool.submit(mmrl_run, env_id, seed, args.steps, runs_root, args.overrides), pool.submit(sb3_run, env_id, seed, args.steps))
                 for seed in args.seeds]
        results = [(m.result(), b.result()) for m, b in pairs]
    rows = [[seed, m["train_steps_per_second"], b["train_steps_per_second"], m["train_steps_per_second"] / b["train_steps_per_second"]]
            for seed, (m, b) in zip(args.seeds, results)]
    print_table(f"{env_id}: training steps/s, {args.steps:,} steps, paired runs", ["seed", "mmrl (image + mission)",
                "SB3 (image)", "ratio"], rows)
    ratios = [r[3] for r in rows]
    return {"part": "speed", "env": env_id, "steps": args.steps, "results": [m for m, _ in results] + [b for _, b in results],
            "summary": {"ratio_mean": mean(ratios), "ratios": ratios}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cnn", "transformer", "babyai", "speed"], required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--envs", nargs="+", default=None)
    parser.add_argument("--steps", type=int, default=None, help="default: 200k (cnn), 300k (transformer), 500k (babyai)")
    parser.add_argument("--exp", default=None, help="babyai part: the preset (default minigrid-ppo, the CNN)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra mmrl overrides (transformer part)")
    parser.add_argument("--bc-demos", type=int, default=0, help="babyai/transformer parts: warm-start from BC on this many bot episodes")
    parser.add_argument("--bc-updates", type=int, default=2000, help="gradient steps of that BC run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.bc_demos < 0:
        parser.error(f"--bc-demos: expected a number of episodes >= 0, got {args.bc_demos}")
    if args.bc_demos and (args.exp or "minigrid-ppo") not in BC_MODEL:
        parser.error(f"--bc-demos: the BC warm start knows the presets {sorted(BC_MODEL)}, not {args.exp}")
    args.steps = args.steps or {"cnn": 200_000, "transformer": 300_000, "babyai": 500_000, "speed": 50_000}[args.part]
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-minigrid-"))
    if args.part == "cnn":
        data = part_cnn(args, runs_root)
    elif args.part == "transformer":
        data = part_levels(args, runs_root, "minigrid-vit", TRANSFORMER_ENVS)
    elif args.part == "speed":
        data = part_speed(args, runs_root)
    else:
        data = part_levels(args, runs_root, args.exp or "minigrid-ppo", BABYAI_ENVS)
    name = {"cnn": "minigrid.json", "transformer": "minigrid_vit.json", "babyai": f"babyai_{data.get('exp')}.json",
            "speed": "minigrid_speed.json"}[args.part]
    write_json(args.out or ROOT / "docs/bench" / name, data)
    print(json.dumps(data["summary"], indent=2))


if __name__ == "__main__":
    main()
