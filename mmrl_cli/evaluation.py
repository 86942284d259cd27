"""Evaluate a policy: success rate and return with 95% confidence intervals.

`evaluate` plays a fixed number of episodes on training, validation or held-out levels (used
during training and by `mmrl eval`); `run_eval` is `mmrl eval`: load a run's checkpoint, evaluate it,
write ``<run>/eval/results.json`` and a GIF of a few episodes.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch

from .distributions import act, remember_action
from .envs.spec import eval_envs
from .builders import autocast_for, load_policy, pick_device
from .checkpoint import write_text_atomic
from .config import EvalCommandConfig, TrainConfig
from .envs import make_env, split_seed
from .text import tokenizer_for

Z95 = 1.959964  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: int) -> list[float]:
    """95% Wilson score interval of a success rate (sound near 0 and 1, unlike mean +- 2 SE)."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    # The interval holds p exactly (at p = 1 rounding put the upper end at 1 - 1e-16, below p).
    return [min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))]


def mean_interval(values: torch.Tensor) -> list[float]:
    """95% normal-approximation interval of a mean (NaN for fewer than two values)."""
    n = len(values)
    if n < 2:
        return [float("nan"), float("nan")]
    mean, half = float(values.mean()), Z95 * float(values.std()) / math.sqrt(n)
    return [mean - half, mean + half]


@torch.inference_mode()
def evaluate(policy, cfg: TrainConfig, device: torch.device, split: str, episodes: int, deterministic: bool,
             autocast=contextlib.nullcontext, seed: int | None = None) -> dict:
    """Success rate and return over `episodes` episodes on the levels of `split`.

    Every sub-env plays a fixed quota of episodes and exactly `episodes` are counted, so short
    episodes are not over-counted. The policy runs in eval mode (restored afterwards). Sampled
    actions come from a generator of their own: evaluating never shifts the random numbers
    training draws.
    """
    seed = cfg.seed + 10_000 if seed is None else seed
    num_envs = eval_envs(cfg.data, episodes)
    env = make_env(cfg.data, num_envs, device, seed, split, tokenizer_for(cfg.model))
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    # Each env plays its first `quota` episodes; the quotas add up to exactly `episodes`.
    quota = torch.full((num_envs,), episodes // num_envs, dtype=torch.int64, device=device)
    quota[: episodes % num_envs] += 1
    counts = torch.zeros(num_envs, dtype=torch.int64, device=device)
    # Env i's episodes go to slots first[i], first[i] + 1, ...: a fixed 17 bytes per episode
    # (what the memory preflight counts), however few episodes end per step.
    first = torch.cumsum(quota, 0) - quota
    returns = torch.zeros(episodes, dtype=torch.float64, device=device)
    lengths = torch.zeros(episodes, dtype=torch.int64, device=device)
    successes = torch.zeros(episodes, dtype=torch.bool, device=device)
    success_defined = False  # envs without a notion of success report none
    was_training = policy.training
    policy.eval()
    obs = env.reset(seed=split_seed(cfg.data, seed, split))
    # A recurrent policy's state, zeroed where an episode starts (every env at the reset).
    recurrent = bool(getattr(policy, "recurrent", False))
    if recurrent:
        state, starts = policy.initial_state(num_envs, device), torch.ones(num_envs, device=device)
    while bool((counts < quota).any()):
        with autocast():
            if recurrent:
                params, _, state = policy.step(obs, state, starts)
            else:
                params, _ = policy(obs)
        dist = policy.distribution(params)
        actions = act(dist, deterministic, generator)
        obs, _, terminated, truncated, info = env.step(dist.to_env(actions))
        if recurrent:
            state, starts = remember_action(policy, state.float(), actions), (terminated | truncated).float()
        index = info["done_index"]
        if not len(index):
            continue
        keep = counts[index] < quota[index]
        slots = (first[index] + counts[index])[keep]
        returns[slots] = info["episode_return"][keep].double()
        lengths[slots] = info["episode_length"][keep].long()
        if "success" in info:
            successes[slots] = info["success"][keep].bool()
            success_defined = True
        counts[index] += 1
    policy.train(was_training)
    if hasattr(env, "close"):
        env.close()
    returns_t = returns.cpu()
    n = len(returns_t)
    success_rate, success_ci95 = None, None  # None: the env does not define success
    if success_defined:
        success_t = successes.double().cpu()
        success_rate, success_ci95 = float(success_t.mean()), wilson_interval(float(success_t.sum()), len(success_t))
    return {
        "episodes": n,
        "success_rate": success_rate,
        "success_ci95": success_ci95,
        "return_mean": float(returns_t.mean()),
        "return_ci95": mean_interval(returns_t),
        "length_mean": float(lengths.double().mean()),
    }


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2))


def run_eval(eval_cfg: EvalCommandConfig, run_dir: Path, checkpoint_dir: Path, train_cfg: TrainConfig) -> dict:
    """`mmrl eval`: evaluate a checkpoint, write eval/results.json and eval/episodes.gif.

    By default (deterministic=null) with argmax and with sampled actions, on the same levels: the
    top-level figures are argmax's, `results["sampled"]` sampling's; the GIF shows argmax actions."""
    from .gif import GifUnavailable, record_episodes, write_gif

    train_cfg.hardware = eval_cfg.hardware
    device = pick_device(eval_cfg.hardware)
    if eval_cfg.hardware.threads:
        torch.set_num_threads(eval_cfg.hardware.threads)
    autocast = autocast_for(device, eval_cfg.hardware.precision)
    seed = train_cfg.seed + 10_000 if eval_cfg.seed is None else eval_cfg.seed
    policy = load_policy(train_cfg, checkpoint_dir / "model.safetensors", device)
    policy.eval()
    # deterministic=null: argmax and sampled actions on the same levels (argmax policies can loop on
    # MiniGrid levels that the same policy solves when sampling: one figure alone misleads).
    modes = [True, False] if eval_cfg.deterministic is None else [eval_cfg.deterministic]
    figures = [evaluate(policy, train_cfg, device, eval_cfg.split, eval_cfg.episodes, mode, autocast, seed)
               for mode in modes]
    results = figures[0]
    if len(modes) == 2:
        results["sampled"] = figures[1]
    out_dir = run_dir / "eval"
    out_dir.mkdir(exist_ok=True)
    results.update(
        run=str(run_dir), checkpoint=checkpoint_dir.name, split=eval_cfg.split,
        deterministic=eval_cfg.deterministic, seed=seed, device=str(device),
        actions=" and ".join("argmax" if mode else "sampled" for mode in modes), data_changes=dict(eval_cfg.data),
    )
    if eval_cfg.gif.episodes:
        try:
            episodes = record_episodes(policy, train_cfg, device, eval_cfg.split, eval_cfg.gif.episodes,
                                       modes[0], seed, eval_cfg.gif.max_steps, autocast,
                                       eval_cfg.gif.imagined)
            write_gif(episodes, out_dir / "episodes.gif", eval_cfg.gif.fps)
            results["gif"] = str(out_dir / "episodes.gif")
        except GifUnavailable as e:
            results["gif_unavailable"] = str(e)
    write_json(out_dir / "results.json", results)
    return results
