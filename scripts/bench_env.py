"""Raw env throughput: the built-in batched `goto` env vs one MiniGrid DoorKey-5x5 env; and
what mmrl's gymnasium path costs on top of the env itself.

Random actions, images rendered every step, measured side by side in one run. The second table
steps 8 MiniGrid/BabyAI envs: bare gymnasium vector env (the floor), Stable-Baselines3's
DummyVecEnv with ImgObsWrapper (image only, as its MiniGrid example), and mmrl's `GymVectorEnv`
(every Dict key to torch: symbolic grid, tokenised mission, one-hot direction) sync and async.

    python scripts/bench_env.py [--seconds 3] [--out docs/bench/env_throughput.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import ROOT, print_table, write_json
from mmrl_cli.envs import GotoEnv


def time_steps(step, seconds: float) -> tuple[int, float]:
    """Call `step()` repeatedly for about `seconds`; return (calls, elapsed)."""
    for _ in range(10):
        step()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            step()
        calls += 20
    return calls, time.perf_counter() - start


def goto_sps(batch: int, seconds: float) -> float:
    env = GotoEnv(batch, seed=0)
    env.reset(seed=0)
    actions = torch.randint(0, env.num_actions, (64, batch))
    i = [0]

    def step():
        env.step(actions[i[0] % 64])
        i[0] += 1

    calls, elapsed = time_steps(step, seconds)
    return calls * batch / elapsed


def minigrid_sps(wrapper_name: str, seconds: float) -> float:
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the envs)
    from minigrid.wrappers import ImgObsWrapper, RGBImgObsWrapper

    env = gym.make("MiniGrid-DoorKey-5x5-v0")
    env = ImgObsWrapper(RGBImgObsWrapper(env) if wrapper_name == "RGBImgObsWrapper+ImgObsWrapper" else env)
    env.reset(seed=0)

    def step():
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()

    calls, elapsed = time_steps(step, seconds)
    return calls / elapsed


GYM_PATH_ENVS = ["MiniGrid-DoorKey-5x5-v0", "BabyAI-GoToLocalS6N4-v0"]


def gym_path_sps(env_id: str, runner: str, seconds: float, num_envs: int = 8) -> float:
    """Steps/s of `num_envs` copies of `env_id` through `runner`, random actions."""
    import gymnasium as gym
    import numpy as np
    import minigrid  # noqa: F401
    from gymnasium.vector import AutoresetMode

    rng = np.random.default_rng(0)
    if runner == "sb3 DummyVecEnv + ImgObsWrapper":
        from minigrid.wrappers import ImgObsWrapper
        from stable_baselines3.common.env_util import make_vec_env

        env = make_vec_env(env_id, n_envs=num_envs, seed=0, wrapper_class=ImgObsWrapper)
        env.reset()
        step = lambda: env.step(rng.integers(0, 7, num_envs))  # noqa: E731
    elif runner == "gymnasium SyncVectorEnv (bare)":
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync",
                           vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP, "copy": False})
        env.reset(seed=0)
        step = lambda: env.step(rng.integers(0, 7, num_envs))  # noqa: E731
    else:
        from mmrl_cli.envs import GymVectorEnv

        env = GymVectorEnv(env_id, num_envs, torch.device("cpu"), seed=0, vectorization=runner.split()[-1])
        env.reset()
        step = lambda: env.step(torch.as_tensor(rng.integers(0, 7, num_envs)))  # noqa: E731
    calls, elapsed = time_steps(step, seconds)
    env.close()
    return calls * num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/env_throughput.json")
    args = parser.parse_args()
    minigrid = {name: minigrid_sps(name, args.seconds) for name in ("ImgObsWrapper", "RGBImgObsWrapper+ImgObsWrapper")}
    anchor = minigrid["ImgObsWrapper"]
    rows, results = [], {"minigrid_doorkey_5x5": minigrid, "goto": {}}
    for name, sps in minigrid.items():
        rows.append([f"MiniGrid DoorKey-5x5, 1 env, {name}", sps, sps / anchor])
    for batch in (1, 64, 1024, 4096):
        sps = goto_sps(batch, args.seconds)
        results["goto"][batch] = sps
        rows.append([f"mmrl goto 5x5, batch {batch}, 40x40 RGB", sps, sps / anchor])
    results["goto_1024_over_minigrid"] = results["goto"][1024] / anchor
    print_table("env steps per second (random actions, CPU, torch threads=%d)" % torch.get_num_threads(),
                ["env", "steps/s", "x MiniGrid ImgObs"], rows)
    runners = ["gymnasium SyncVectorEnv (bare)", "sb3 DummyVecEnv + ImgObsWrapper", "mmrl GymVectorEnv sync",
               "mmrl GymVectorEnv async"]
    rows, results["gym_path"] = [], {}
    for env_id in GYM_PATH_ENVS:
        measured = {runner: gym_path_sps(env_id, runner, args.seconds) for runner in runners}
        results["gym_path"][env_id] = measured
        floor = measured[runners[0]]
        rows += [[env_id, runner, sps, sps / floor] for runner, sps in measured.items()]
    print_table("the gymnasium path: 8 envs, random actions", ["env", "runner", "steps/s", "x bare gymnasium"], rows)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
