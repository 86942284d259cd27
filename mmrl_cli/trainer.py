"""The training loop: collect a rollout, compute advantages, update, log, evaluate, checkpoint.

`train` reads top to bottom; everything it calls has one job (env, policy, buffer, algorithm,
monitor, evaluation, checkpoint). Hot loops read plain Python values from the typed config.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from .actions import sample_actions
from .algos import ALGOS
from .algos.optim import global_norm
from .builders import autocast_for, build_env_and_policy, pick_device
from .checkpoint import load_model, load_state, save_checkpoint, save_weights, set_aside_newer
from .config import TrainConfig
from .evaluation import evaluate, write_json
from .monitor import Monitor
from .rng import global_rng_state, load_generator_state, seed_everything, set_global_rng_state
from .rollout import RolloutBuffer
from .signals import StopRequests


class NumericalFault(RuntimeError):
    """Too many gradient steps in a row had a non-finite loss or gradient."""


@dataclasses.dataclass
class Progress:
    """Where a run stands: saved in every checkpoint as plain data."""

    update: int = 0
    steps: int = 0
    next_eval: int = 0
    wall_seconds: float = 0.0  # training time spent by earlier sessions of this run
    evaluations: list = dataclasses.field(default_factory=list)
    heldout: dict = dataclasses.field(default_factory=dict)  # the latest held-out evaluation


def train(cfg: TrainConfig, run_dir: Path, monitor: Monitor | None = None, resume_from: Path | None = None) -> dict:
    """Train a policy as `cfg` says, in `run_dir`; continue from checkpoint `resume_from` if given.

    Returns the summary; ``summary["stopped_by"]`` names the signal if Ctrl-C or SIGTERM
    stopped the run early (after a checkpoint). Raises NumericalFault when too many gradient
    steps in a row were not finite (the last good checkpoint is kept).
    """
    algo_cfg = cfg.algo
    device = pick_device(cfg.hardware)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    seed_everything(cfg.seed)
    autocast = autocast_for(device, cfg.hardware.precision)
    env, policy = build_env_and_policy(cfg, algo_cfg.n_envs, device)
    steps_per_update = algo_cfg.n_envs * algo_cfg.n_steps
    total_updates = max(1, algo_cfg.total_steps // steps_per_update)
    algo = ALGOS[algo_cfg.type](algo_cfg, policy, total_updates, autocast)
    algo.generator.manual_seed(cfg.seed)
    action_rng = torch.Generator(device=device)  # action sampling in rollouts
    action_rng.manual_seed(cfg.seed)
    buffer = RolloutBuffer(algo_cfg.n_steps, algo_cfg.n_envs, env.observation_spec, device)
    progress = Progress(next_eval=cfg.eval.every_steps)
    obs = env.reset(seed=cfg.seed)
    if resume_from is not None:
        obs = restore(resume_from, policy, algo, env, action_rng, progress, device) or obs
        for name in set_aside_newer(resume_from.parent, resume_from.name):
            print(f"mmrl train: checkpoint {name} is newer than the one resumed from: moved to checkpoints/abandoned/",
                  file=sys.stderr)
    if cfg.hardware.compile:
        policy.compile()
    monitor = monitor or Monitor(cfg, run_dir, total_updates * steps_per_update, start=(progress.update, progress.steps),
                                 skipped_before=algo.skipped_steps)
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(dataclasses.replace(cfg, resume=None)))
    saved_update = progress.update if resume_from is not None else None

    def checkpoint() -> None:
        nonlocal session_start, saved_update
        if not parameters_finite(policy):  # never save what a bad step made of the weights
            raise NumericalFault(f"the parameters are not finite at update {progress.update} "
                                 f"(is algo.lr={algo_cfg.lr} too high?)")
        progress.wall_seconds += time.perf_counter() - session_start
        session_start = time.perf_counter()
        state = {"algo": algo.state_dict(), "env": env_state(env), "obs": obs, "progress": dataclasses.asdict(progress),
                 "device_type": device.type,
                 "rng": {**global_rng_state(), "actions": action_rng.get_state()}}
        save_checkpoint(run_dir / "checkpoints", progress.update, policy.state_dict(), state, config_yaml,
                        cfg.checkpoint.keep_last)
        saved_update = progress.update

    bootstrap = algo_cfg.bootstrap_truncated and env.bootstrap_time_limit
    session_start = time.perf_counter()
    stop = StopRequests()
    with monitor, stop:
        while progress.update < total_updates and not stop.requested:
            update_start = time.perf_counter()
            # 1. Collect a rollout with the current policy (inference mode: no autograd bookkeeping).
            with torch.inference_mode():
                for t in range(algo_cfg.n_steps):
                    with autocast():
                        logits, value = policy(obs)
                    action, logprob = sample_actions(logits, generator=action_rng)
                    buffer.store_obs(t, obs)  # before stepping: env buffers are updated in place
                    obs, reward, terminated, truncated, info = env.step(action)
                    if bootstrap and "final_obs" in info:
                        reward = bootstrap_truncated(policy, reward, truncated, info, algo_cfg.gamma, autocast)
                    buffer.store(t, action, logprob, value.float(), reward, terminated | truncated)
                    monitor.record_episodes(info)
                with autocast():
                    last_value = policy(obs)[1].float()
            buffer.compute_advantages(last_value, algo_cfg.gamma, algo_cfg.gae_lambda)
            progress.steps += steps_per_update
            progress.update += 1

            # 2. Improve the policy on that rollout (steps with a non-finite loss or gradient are skipped).
            metrics = algo.update(buffer, on_gradients=monitor.check_gradients)
            if algo.skipped_in_a_row >= cfg.numerics.max_skipped_in_a_row:
                raise NumericalFault(
                    f"{algo.skipped_in_a_row} gradient steps in a row had a non-finite loss or gradient "
                    f"(numerics.max_skipped_in_a_row={cfg.numerics.max_skipped_in_a_row}); stopped at update {progress.update}"
                )

            # 3. Report, evaluate on held-out levels now and then, checkpoint.
            elapsed = progress.wall_seconds + time.perf_counter() - session_start
            monitor.log_update(progress.update, progress.steps, metrics, algo.skipped_steps,
                               progress.steps / elapsed, time.perf_counter() - update_start)
            if progress.steps >= progress.next_eval or progress.update == total_updates:
                progress.next_eval += cfg.eval.every_steps
                run_evaluations(policy, cfg, device, autocast, monitor, progress, elapsed)
            if progress.update % cfg.checkpoint.every_updates == 0 or progress.update == total_updates:
                checkpoint()
        if saved_update != progress.update:  # stopped by a signal between checkpoints
            checkpoint()

    save_weights(policy.state_dict(), run_dir / "model.safetensors")
    wall = progress.wall_seconds
    heldout = progress.heldout
    summary = {
        "heldout_success_rate": heldout.get("success_rate", float("nan")),
        "heldout_success_ci95": heldout.get("success_ci95", [float("nan")] * 2),
        "heldout_return": heldout.get("return_mean", float("nan")),
        "steps": progress.steps,
        "updates": progress.update,
        "wall_seconds": wall,
        "steps_per_second": progress.steps / wall if wall else float("nan"),
        "skipped_steps": algo.skipped_steps,
        "device": str(device),
        "run_dir": str(run_dir),
        "stopped_by": stop.name if stop.requested else None,
        "evaluations": progress.evaluations,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter is finite (one fused reduction, one sync)."""
    return math.isfinite(global_norm([p.detach() for p in module.parameters()]))


def run_evaluations(policy, cfg: TrainConfig, device, autocast, monitor: Monitor, progress: Progress, elapsed: float) -> None:
    """Evaluate on held-out levels (and training levels, for the generalisation gap); log it."""
    heldout = evaluate(policy, cfg, device, "heldout", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    on_train = None
    if cfg.data.type == "goto":
        on_train = evaluate(policy, cfg, device, "train", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    monitor.log_eval(progress.steps, on_train, heldout)
    progress.heldout = heldout
    progress.evaluations.append({"step": progress.steps, "heldout": heldout, "train": on_train, "wall_seconds": elapsed})


def env_state(env) -> dict | None:
    """The env's state dict, or None for envs that cannot be snapshotted (gymnasium envs)."""
    return env.state_dict() if hasattr(env, "state_dict") else None


def restore(path: Path, policy, algo, env, action_rng: torch.Generator, progress: Progress, device) -> dict | None:
    """Load checkpoint `path` into the live objects; return the observation to continue from.

    Gymnasium envs cannot be snapshotted: they restart their episodes (returns None, so the
    caller keeps the fresh reset); everything else continues exactly.
    """
    load_model(path / "model.safetensors", policy)
    state = load_state(path)
    algo.load_state_dict(state["algo"])
    for key, value in state["progress"].items():
        setattr(progress, key, value)
    set_global_rng_state(state["rng"])
    load_generator_state(action_rng, state["rng"]["actions"])
    if state.get("device_type", device.type) != device.type:
        print(f"mmrl train: warning: resuming on {device.type} a run checkpointed on {state['device_type']}: the env and "
              f"action-sampling random streams restart, so the run continues but not bit-identically", file=sys.stderr)
    if state["env"] is None or not hasattr(env, "load_state_dict"):
        return None
    env.load_state_dict(state["env"])
    return {k: v.to(device) for k, v in state["obs"].items()}


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
