"""The training loop: collect a rollout, compute advantages, update, log, evaluate, save.

`train` reads top to bottom; everything it calls has one job (env, policy, buffer, algorithm,
monitor, evaluation). Hot loops read plain Python values from the typed config.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .algos import ALGOS
from .config import TrainConfig
from .envs import make_env
from .models import build_policy
from .models.patches import default_patch_size
from .monitor import Monitor
from .rollout import RolloutBuffer


def pick_device(hardware) -> torch.device:
    """The torch device `hardware.device` names (`auto`: CUDA if available, else CPU)."""
    if hardware.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(hardware.device)


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for the chosen precision (fp32: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_actions(logits: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take the argmax of) categorical actions; return them with their log-probs."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    if deterministic:
        actions = log_p.argmax(-1)
    else:
        actions = torch.multinomial(log_p.exp(), 1).squeeze(1)
    return actions, log_p.gather(1, actions.unsqueeze(1)).squeeze(1)


def build_env_and_policy(cfg: TrainConfig, num_envs: int, device: torch.device, split: str = "train"):
    """The batched env and a matching freshly initialised policy on `device`."""
    env = make_env(cfg.data, num_envs, device, cfg.seed, split)
    policy = build_policy(cfg.model, env.observation_spec, env.num_actions, patch_size_for(env))
    return env, policy.to(device)


def patch_size_for(env) -> int:
    """ViT patch size: the built-in env's tile (a patch is a cell), else the default for the image."""
    if hasattr(env, "tile_size"):
        return env.tile_size
    if "image" not in env.observation_spec:
        return 1  # no image: only non-ViT models get here
    height, width, _ = env.observation_spec["image"][0]
    return default_patch_size(height, width)


@torch.inference_mode()
def evaluate(policy, cfg: TrainConfig, device: torch.device, split: str, episodes: int,
             deterministic: bool, autocast=contextlib.nullcontext) -> dict[str, float]:
    """Success rate and return over `episodes` episodes on training or held-out levels.

    Every sub-env plays a fixed quota of episodes, so short episodes are not over-counted.
    """
    num_envs = episodes if cfg.data.type == "goto" else min(episodes, 64)
    env = make_env(cfg.data, num_envs, device, cfg.seed + 10_000, split)
    quota = math.ceil(episodes / num_envs)
    counts = torch.zeros(num_envs, dtype=torch.int64, device=device)
    returns, lengths, successes = [], [], []
    obs = env.reset(seed=cfg.seed + 10_000)
    while bool((counts < quota).any()):
        with autocast():
            logits, _ = policy(obs)
        obs, _, _, _, info = env.step(sample_actions(logits, deterministic)[0])
        index = info["done_index"]
        if not len(index):
            continue
        keep = counts[index] < quota
        returns.append(info["episode_return"][keep])
        lengths.append(info["episode_length"][keep])
        successes.append(info["success"][keep])
        counts[index] += 1
    if hasattr(env, "close"):
        env.close()
    returns_t = torch.cat(returns).float()
    success_t = torch.cat(successes).float()
    n = len(returns_t)
    return {
        "episodes": n,
        "success_rate": float(success_t.mean()),
        "success_ci95": 1.96 * float(success_t.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "return_mean": float(returns_t.mean()),
        "return_ci95": 1.96 * float(returns_t.std() / math.sqrt(n)) if n > 1 else float("nan"),
        "length_mean": float(torch.cat(lengths).float().mean()),
    }


def save_model(policy: torch.nn.Module, path: Path) -> None:
    """Write the policy weights as safetensors, atomically (temp file, fsync, rename)."""
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}
    save_file(state, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def train(cfg: TrainConfig, run_dir: Path, monitor: Monitor | None = None) -> dict:
    """Train a policy as `cfg` says; write TensorBoard logs and the model into `run_dir`."""
    algo_cfg = cfg.algo
    device = pick_device(cfg.hardware)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    seed_everything(cfg.seed)
    autocast = autocast_for(device, cfg.hardware.precision)
    env, policy = build_env_and_policy(cfg, algo_cfg.n_envs, device)
    if cfg.hardware.compile:
        policy.compile()
    steps_per_update = algo_cfg.n_envs * algo_cfg.n_steps
    total_updates = max(1, algo_cfg.total_steps // steps_per_update)
    algo = ALGOS[algo_cfg.type](algo_cfg, policy, total_updates, autocast)
    algo.generator.manual_seed(cfg.seed)
    buffer = RolloutBuffer(algo_cfg.n_steps, algo_cfg.n_envs, env.observation_spec, device)
    monitor = monitor or Monitor(cfg, run_dir, total_updates * steps_per_update)
    heldout: dict = {}
    evaluations = []
    next_eval = cfg.eval.every_steps
    start = time.perf_counter()
    steps = 0

    bootstrap = algo_cfg.bootstrap_truncated and env.bootstrap_time_limit
    obs = env.reset(seed=cfg.seed)
    with monitor:
        for update in range(1, total_updates + 1):
            update_start = time.perf_counter()
            # 1. Collect a rollout with the current policy (inference mode: no autograd bookkeeping).
            with torch.inference_mode():
                for t in range(algo_cfg.n_steps):
                    with autocast():
                        logits, value = policy(obs)
                    action, logprob = sample_actions(logits)
                    buffer.store_obs(t, obs)  # before stepping: env buffers are updated in place
                    obs, reward, terminated, truncated, info = env.step(action)
                    if bootstrap and "final_obs" in info:
                        reward = bootstrap_truncated(policy, reward, truncated, info, algo_cfg.gamma, autocast)
                    buffer.store(t, action, logprob, value.float(), reward, terminated | truncated)
                    monitor.record_episodes(info)
                with autocast():
                    last_value = policy(obs)[1].float()
            buffer.compute_advantages(last_value, algo_cfg.gamma, algo_cfg.gae_lambda)
            steps += steps_per_update

            # 2. Improve the policy on that rollout.
            metrics = algo.update(buffer, on_gradients=monitor.check_gradients)

            # 3. Report, and evaluate on held-out levels now and then.
            elapsed = time.perf_counter() - start
            monitor.log_update(steps, metrics, steps / elapsed, time.perf_counter() - update_start)
            if steps >= next_eval or update == total_updates:
                next_eval += cfg.eval.every_steps
                heldout = evaluate(policy, cfg, device, "heldout", cfg.eval.episodes, cfg.eval.deterministic, autocast)
                on_train = None
                if cfg.data.type == "goto":
                    on_train = evaluate(policy, cfg, device, "train", cfg.eval.episodes, cfg.eval.deterministic, autocast)
                monitor.log_eval(steps, on_train, heldout)
                evaluations.append({"step": steps, "heldout": heldout, "train": on_train,
                                    "wall_seconds": time.perf_counter() - start})

    wall = time.perf_counter() - start
    save_model(policy, run_dir / "model.safetensors")
    summary = {
        "heldout_success_rate": heldout["success_rate"],
        "heldout_success_ci95": heldout["success_ci95"],
        "heldout_return": heldout["return_mean"],
        "steps": steps,
        "wall_seconds": wall,
        "steps_per_second": steps / wall,
        "device": str(device),
        "run_dir": str(run_dir),
        "evaluations": evaluations,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def bootstrap_truncated(policy, reward, truncated, info, gamma: float, autocast) -> torch.Tensor:
    """Add ``gamma * V(last observation)`` to the reward of episodes cut by a time limit.

    A time-out is not a real end of the task, so its return is bootstrapped from the value of
    the state it stopped in (what Stable-Baselines3 does), not treated as zero.
    """
    done_index = info["done_index"]
    cut = truncated.index_select(0, done_index)
    if not bool(cut.any()):
        return reward
    final = {k: v[cut] for k, v in info["final_obs"].items()}
    with autocast():
        values = policy(final)[1].float()
    reward = reward.clone()
    reward[done_index[cut]] += gamma * values
    return reward
