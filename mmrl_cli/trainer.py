"""The training loop, the same for every algorithm: collect, update, report, evaluate, checkpoint.

`train(cfg, run_dir, callbacks=...)` is the Python entry point (no Hydra needed): it reads top to
bottom, and everything it calls has one job (the collector plays the policy, the algorithm
learns from the rollout, the monitor reports, `evaluate` measures, `save_checkpoint` saves).

Levels: periodic evaluations use *validation* levels (and, when training on a finite subset of
levels, the training levels too, for the generalisation gap); the *held-out* levels are played
once, at the end, for the final report, so choosing on validation never peeks at them.

Callbacks watch the run and may stop it: any object with ``on_rollout(rollout)`` (may add
per-transition labels), ``on_update(progress, metrics)`` and/or ``on_evaluation(progress,
results)`` methods; raising `StopTraining` in `on_update` or `on_evaluation` stops the run after
a checkpoint, with ``summary["stopped_by"]`` naming the reason (an Optuna pruner, a curriculum
that is done, a wall-clock budget).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .algos import ALGOS
from .algos.optim import global_norm
from .builders import autocast_for, build_env_and_policy, pick_device
from .compress.setup import attach, prepare_policy
from .compress.structure import STRUCTURE_NOTE, is_structured
from .checkpoint import (POLICY, load_modules, load_state, save_checkpoint, save_weights, set_aside_newer,
                         write_text_atomic)
from .config import TrainConfig, validate
from .evaluation import evaluate, write_json
from .distributed import Distributed
from .monitor import Monitor, SilentMonitor
from .rng import global_rng_state, seed_everything, set_global_rng_state
from .rollout import Collector
from .signals import StopRequests


class NumericalFault(RuntimeError):
    """Too many gradient steps in a row had a non-finite loss or gradient."""


class StopTraining(Exception):
    """Raised by a callback to stop the run cleanly (after a checkpoint); the message is the reason."""


@dataclasses.dataclass
class Progress:
    """Where a run stands: saved in every checkpoint as plain data, shown to callbacks."""

    update: int = 0
    steps: int = 0
    episodes: int = 0  # training episodes finished so far (every rank's)
    next_eval: int = 0
    wall_seconds: float = 0.0  # training time spent by earlier sessions of this run
    eval_seconds: float = 0.0  # the part of it spent in evaluations
    evaluations: list = dataclasses.field(default_factory=list)  # periodic evaluations (validation levels)
    heldout: dict = dataclasses.field(default_factory=dict)  # the final held-out evaluation, once done


def train(cfg: TrainConfig | DictConfig | dict, run_dir: str | Path, callbacks: Iterable = (),
          resume_from: Path | None = None, monitor: Monitor | None = None) -> dict:
    """Train a policy as `cfg` says, in `run_dir`; continue from checkpoint `resume_from` if given.

    `cfg` is a `TrainConfig` or a mapping of the same shape (validated either way). Returns the
    summary; ``summary["stopped_by"]`` names the signal or callback that stopped the run early
    (after a checkpoint), None when it ran to the end. Raises NumericalFault when too many
    gradient steps in a row were not finite (the last good checkpoint is kept).
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else validate(cfg)
    cfg.check()
    run_dir = Path(run_dir)
    callbacks = list(callbacks)
    device = pick_device(cfg.hardware)
    dist = Distributed.from_env(device.type, cfg.hardware.backend)  # one rank unless started by torchrun
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    seed_everything(cfg.seed)
    autocast = autocast_for(device, cfg.hardware.precision)
    env, policy = build_env_and_policy(cfg, cfg.rollout.n_envs, device, seed=dist.seed(cfg.seed))
    # Compression: the checkpoint's structure, init_from's (shrunk) weights, the frozen teacher.
    teacher, compression_done = prepare_policy(cfg, policy, device, resume_from)
    steps_per_update = cfg.steps_per_update * dist.world_size  # env steps of all ranks together
    total_updates = updates_of(cfg, dist.world_size)
    if resume_from is not None:  # the steps left, in updates of this run's size (the rank count may have changed)
        saved = load_state(resume_from)["progress"]
        total_updates = max(1, saved["update"] + max(0, cfg.total_steps - saved["steps"]) // steps_per_update)
    if cfg.compression.type == "distill":  # learns from the teacher, with the compression section's settings
        algo = ALGOS["distill"](cfg.compression, policy, total_updates, autocast)
    else:
        algo = ALGOS[cfg.algo.type](cfg.algo, policy, total_updates, autocast, cfg.hardware.fast_path)
    algo.seed(cfg.seed)
    if dist.enabled:  # every rank starts from rank 0's weights, then draws its own random streams
        dist.broadcast_parameters(policy)
        seed_everything(dist.seed(cfg.seed))
        algo.distributed = algo.gradient.distributed = dist
    collector = Collector(env, policy, cfg.rollout.n_steps, device, dist.seed(cfg.seed), autocast,
                          cfg.rollout.bootstrap_truncated)
    modules = {POLICY: policy}  # named modules saved in checkpoints (methods may add a teacher, a world model)
    progress = Progress(next_eval=cfg.eval.every_steps)
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(dataclasses.replace(cfg, resume=None)))
    if resume_from is not None:
        # Under several ranks each rank's envs start afresh (their saved state is rank 0's alone).
        restore(resume_from, modules, algo, None if dist.enabled else collector, progress, device)
        for name in set_aside_newer(resume_from.parent, resume_from.name) if dist.is_main else []:
            print(f"mmrl train: checkpoint {name} is newer than the one resumed from: moved to checkpoints/abandoned/",
                  file=sys.stderr)
        if algo.clock.remaining() == 0 and progress.update < total_updates and cfg.algo.lr_schedule == "linear" \
                and dist.is_main:
            print("mmrl train: warning: this run's linear learning-rate schedule has annealed to 0, so further updates "
                  "change nothing; add algo.lr_schedule=constant to go on at algo.lr", file=sys.stderr)
    elif dist.is_main:
        write_text_atomic(run_dir / "config.yaml", config_yaml)
        if compression_done:
            write_json(run_dir / "compression.json", compression_done)
    callbacks += attach(cfg, policy, algo, teacher, total_updates, progress.steps)
    if cfg.hardware.compile:
        policy.compile(mode=cfg.hardware.compile_mode)
    if monitor is None:
        final_step = progress.steps + (total_updates - progress.update) * steps_per_update
        monitor = Monitor(cfg, run_dir, final_step, start=(progress.update, progress.steps),
                          skipped_before=algo.gradient.skipped_steps) if dist.is_main else SilentMonitor()
    saved_update = progress.update if resume_from is not None else None
    session_start = time.perf_counter()

    def checkpoint() -> None:
        nonlocal session_start, saved_update
        if not parameters_finite(policy):  # never save what a bad step made of the weights
            raise NumericalFault(f"the parameters are not finite at update {progress.update} "
                                 f"(is algo.lr={cfg.algo.lr} too high?)")
        progress.wall_seconds += time.perf_counter() - session_start
        session_start = time.perf_counter()
        saved_update = progress.update
        if not dist.is_main:  # rank 0 writes for everyone
            return
        state = {"algo": algo.state_dict(), "collector": collector.state_dict(), "progress": dataclasses.asdict(progress),
                 "device_type": device.type, "rng": global_rng_state(), "world_size": dist.world_size}
        save_checkpoint(run_dir / "checkpoints", progress.update, {k: m.state_dict() for k, m in modules.items()},
                        state, config_yaml, cfg.checkpoint.keep_last, structures={POLICY: structure_note(policy)})

    stop = StopRequests()
    stopped_by, stopping = None, False
    with monitor, stop:
        while progress.update < total_updates and not stopping and stopped_by is None:
            update_start = time.perf_counter()
            # 1. Collect a rollout with the current policy (callbacks may label it, e.g. a teacher's logits).
            rollout = collector.collect()
            notify(callbacks, "on_rollout", rollout)
            # 2. Learn from it: the algorithm's losses, backward, optimiser step(s).
            metrics = dist.mean_metrics(algo.update(rollout))
            progress.update += 1
            progress.steps += steps_per_update
            if algo.gradient.skipped_in_a_row >= cfg.numerics.max_skipped_in_a_row:
                raise NumericalFault(
                    f"{algo.gradient.skipped_in_a_row} gradient steps in a row had a non-finite loss or gradient "
                    f"(numerics.max_skipped_in_a_row={cfg.numerics.max_skipped_in_a_row}); stopped at update {progress.update}"
                )

            # 3. Report; evaluate on validation levels now and then; let callbacks watch (and stop).
            elapsed = progress.wall_seconds + time.perf_counter() - session_start
            stopped_by = notify(callbacks, "on_update", progress, metrics)  # callbacks may add metrics (e.g. sparsity)
            episodes = dist.gather(collector.take_episodes())
            progress.episodes += sum(len(returns) for returns, _, _ in episodes)
            monitor.log_update(progress.update, progress.steps, metrics, episodes,
                               algo.gradient.skipped_steps, progress.steps / elapsed,
                               time.perf_counter() - update_start, algo.gradient.module_grad_norms)
            last = progress.update == total_updates
            if progress.steps >= progress.next_eval or last:
                progress.next_eval += cfg.eval.every_steps
                eval_start = time.perf_counter()
                results = run_evaluations(policy, cfg, device, autocast, monitor, progress, elapsed)
                progress.eval_seconds += time.perf_counter() - eval_start
                reason = notify(callbacks, "on_evaluation", progress, results)  # every callback sees every evaluation
                stopped_by = stopped_by or reason
            if last:  # the final report: held-out levels, once per run (or per extension of it)
                eval_start = time.perf_counter()
                progress.heldout = evaluate(policy, cfg, device, "heldout", cfg.eval.episodes, cfg.eval.deterministic,
                                            autocast)
                progress.eval_seconds += time.perf_counter() - eval_start
                monitor.log_heldout(progress.steps, progress.heldout)

            # 4. Checkpoint now and then, at the end, and before any early stop (a signal on any rank
            #    stops every rank at this same update).
            stopping = dist.any(stop.requested)
            if progress.update % cfg.checkpoint.every_updates == 0 or last or stopped_by or stopping:
                checkpoint()
        if saved_update != progress.update:  # stopped by a signal between checkpoints
            checkpoint()

    summary = make_summary(progress, algo, device, run_dir, stop_reason(stop, stopping, stopped_by))
    if dist.is_main:
        save_weights(policy.state_dict(), run_dir / "model.safetensors", structure_note(policy))
        write_json(run_dir / "summary.json", summary)
    dist.close()  # every rank leaves together, after rank 0 has written
    return summary


def stop_reason(stop: StopRequests, stopping: bool, stopped_by: str | None) -> str | None:
    """What stopped the run early: this rank's signal, another rank's, a callback, or nothing."""
    if stop.requested:
        return stop.name
    if stopping:
        return "SIGTERM"  # another rank was signalled (torchrun passes a stop to every rank)
    return stopped_by


def updates_of(cfg: TrainConfig, world_size: int) -> int:
    """Updates the run makes: total_steps over the env steps of one update of every rank (at least one)."""
    return max(1, cfg.total_steps // (cfg.steps_per_update * world_size))



def notify(callbacks: list, event: str, *args) -> str | None:
    """Call `event` on every callback that has it; the reason of the first `StopTraining`, if any."""
    for callback in callbacks:
        hook = getattr(callback, event, None)
        if hook is None:
            continue
        try:
            hook(*args)
        except StopTraining as e:
            return f"{type(callback).__name__}: {e}" if str(e) else type(callback).__name__
    return None


def make_summary(progress: Progress, algo, device: torch.device, run_dir: Path, stopped_by: str | None) -> dict:
    """The run's final figures: held-out results (if the run got to its end), speed, evaluations."""
    wall = progress.wall_seconds
    heldout = progress.heldout
    validation = progress.evaluations[-1]["validation"] if progress.evaluations else {}
    nan = float("nan")
    return {
        # success: None where the env does not define it; NaN where no held-out evaluation ran
        "heldout_success_rate": heldout.get("success_rate", nan),
        "heldout_success_ci95": heldout.get("success_ci95", [nan, nan]),
        "heldout_return": heldout.get("return_mean", nan),
        "heldout_return_ci95": heldout.get("return_ci95", [nan, nan]),
        "validation_success_rate": validation.get("success_rate", nan),
        "validation_return": validation.get("return_mean", nan),
        "steps": progress.steps,
        "episodes": progress.episodes,
        "updates": progress.update,
        "wall_seconds": wall,
        "steps_per_second": progress.steps / wall if wall else nan,
        "eval_seconds": progress.eval_seconds,
        "train_steps_per_second": progress.steps / (wall - progress.eval_seconds) if wall > progress.eval_seconds else nan,
        "skipped_steps": algo.gradient.skipped_steps,
        "device": str(device),
        "run_dir": str(run_dir),
        "stopped_by": stopped_by,
        "evaluations": progress.evaluations,
    }


def structure_note(policy: torch.nn.Module) -> str | None:
    """The checkpoint header note of a policy whose shapes are not its config's (pruned, factorised)."""
    return STRUCTURE_NOTE if is_structured(policy) else None


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter is finite (one fused reduction, one sync)."""
    return math.isfinite(global_norm([p.detach() for p in module.parameters()]))


def uses_level_subset(cfg: TrainConfig) -> bool:
    """True when training plays a finite set of levels (then the generalisation gap means something)."""
    return cfg.data.type == "goto" and cfg.data.num_train_levels > 0


def run_evaluations(policy, cfg: TrainConfig, device, autocast, monitor: Monitor, progress: Progress,
                    elapsed: float) -> dict:
    """Evaluate on validation levels (and on the training levels when they are a finite subset); log it."""
    validation = evaluate(policy, cfg, device, "validation", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    on_train = None
    if uses_level_subset(cfg):
        on_train = evaluate(policy, cfg, device, "train", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    monitor.log_eval(progress.steps, validation, on_train)
    results = {"step": progress.steps, "episodes": progress.episodes, "validation": validation, "train": on_train,
               "wall_seconds": elapsed}
    progress.evaluations.append(results)
    return results


def restore(path: Path, modules: dict, algo, collector: Collector | None, progress: Progress, device: torch.device) -> None:
    """Load checkpoint `path` into the live objects (modules, algorithm, collector, counters, RNGs);
    `collector` None: the envs start afresh (several ranks: the saved env state is one rank's)."""
    load_modules(path, modules)
    state = load_state(path)
    algo.load_state_dict(state["algo"])
    for key, value in state["progress"].items():
        setattr(progress, key, value)
    if collector is None:
        return
    collector.load_state_dict(state["collector"])
    set_global_rng_state(state["rng"])
    if state.get("device_type", device.type) != device.type:
        print(f"mmrl train: warning: resuming on {device.type} a run checkpointed on {state['device_type']}: the env and "
              f"action-sampling random streams restart, so the run continues but not bit-identically", file=sys.stderr)
