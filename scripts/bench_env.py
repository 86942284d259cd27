"""Raw env throughput: the built-in batched `goto` env vs one MiniGrid DoorKey-5x5 env.

Random actions, images rendered every step, measured side by side in one run.

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
    write_json(args.out, results)


if __name__ == "__main__":
    main()
