"""The training loop, the same for every algorithm: collect, update, report, evaluate, checkpoint.

`train(cfg, run_dir, callbacks=...)` is the Python entry point (no Hydra needed): it reads top to
bottom, and everything it calls has one job (the collector plays the policy, the algorithm
learns from the rollout, the monitor reports, `evaluate` measures, `save_checkpoint` saves).

Levels: periodic evaluations use *validation* levels (and, when training on a finite subset of
levels, the training levels too, for the generalisation gap); the *held-out* levels are played
once, at the end, for the final report, so choosing on validation never peeks at them.

Callbacks watch the run and may stop it: any object with ``on_rollout(rollout)`` (may add
per-transition labels), ``on_advantages(rollout)`` (after the update, with its advantages: PLR's
level scores), ``on_update(progress, metrics)`` and/or ``on_evaluation(progress,
results)`` methods; raising `StopTraining` in `on_update` or `on_evaluation` stops the run after
a checkpoint, with ``summary["stopped_by"]`` naming the reason (an Optuna pruner, a curriculum
that is done, a wall-clock budget).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .algos import ALGOS, Setup, algorithm_name
from .algos.optim import global_norm
from .builders import autocast_for, build_policy_from, pick_device, transforms_of
from .compress.setup import attach, init_from_weights, load_teacher
from .compress.structure import STRUCTURE_NOTE, is_structured
from .checkpoint import (POLICY, CheckpointError, load_modules, optimizer_state_mismatch, save_checkpoint,
                         save_weights, set_aside_newer, state_mismatch, write_text_atomic)
from .config import TrainConfig, validate
from .evaluation import evaluate, write_json
from .distributed import Distributed
from .errors import StopTraining  # noqa: F401  (re-exported: callbacks raise trainer.StopTraining)
from .envs import make_env
from .envs.spec import trains_on_level_subset
from .levels import attach_levels
from .models.naming import attach_naming
from .monitor import Monitor, SilentMonitor
from .rng import global_rng_state, seed_everything, set_global_rng_state
from .runs import Progress, checked_state, lock_run
from .signals import StopRequests
from .models.finetune import has_lora, lora_note, merge_lora, parameter_counts
from .text import tokenizer_for


class NumericalFault(RuntimeError):
    """Too many gradient steps in a row had a non-finite loss or gradient."""


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
    algo_class = ALGOS[algorithm_name(cfg)]
    device = torch.device("cpu") if algo_class.cpu_only else pick_device(cfg.hardware)
    dist = Distributed.from_env(device.type, cfg.hardware.backend)  # one rank unless started by torchrun
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hardware.threads:
        torch.set_num_threads(cfg.hardware.threads)
    seed_everything(cfg.seed)
    autocast = autocast_for(device, cfg.hardware.precision)
    env = make_env(cfg.data, cfg.rollout.n_envs, device, dist.seed(cfg.seed), tokenizer=tokenizer_for(cfg.model))
    # Level sampler and curriculum (uniform levels and no curriculum: none, the env untouched); before the
    # collector's first reset, which already asks the sampler. First among the callbacks, so that it sees
    # every update even when a later callback stops the run (its state is checkpointed then).
    callbacks = attach_levels(cfg.data, env, dist.seed(cfg.seed)) + callbacks
    # The policy: resumed (the checkpoint's weights, in its structure), from init_from's weights
    # (shrunk by the compression's transforms on this fresh start), or from scratch.
    source, transforms = None, []
    if resume_from is not None:
        source = resume_from / "model.safetensors"
    elif cfg.init_from is not None:
        source, transforms = init_from_weights(cfg), transforms_of(cfg)
    policy, compression_done = build_policy_from(cfg, env, device, source, transforms,
                                                 towers_if_heads_differ=cfg.init_from is not None and resume_from is None)
    teacher = load_teacher(cfg, device) if cfg.teacher is not None else None
    # Train steps of the run (resumed: the steps left, in steps of this run's size; the rank count may have changed).
    saved = checked_state(resume_from)["progress"] if resume_from is not None else None
    total_updates = algo_class.planned_updates(cfg, dist.world_size, saved)
    algo = algo_class.build(Setup(cfg, env, policy, device, autocast, total_updates, dist.seed(cfg.seed), teacher,
                                  resuming=resume_from is not None))
    algo.seed(cfg.seed)
    if dist.enabled:  # every rank starts from rank 0's weights, then draws its own random streams
        for module in algo.modules().values():
            dist.broadcast_parameters(module)
        seed_everything(dist.seed(cfg.seed))
        algo.set_distributed(dist)
    modules = algo.modules()  # named modules saved in checkpoints (the policy, a teacher, a world model, ...)
    progress = Progress(next_eval=cfg.eval.every_steps)
    config_yaml = OmegaConf.to_yaml(OmegaConf.structured(dataclasses.replace(cfg, resume=None)))
    if resume_from is not None:
        # Under several ranks each rank's envs start afresh (their saved state is rank 0's alone).
        restore(resume_from, modules, algo, not dist.enabled, progress, device)
    # Locked only now: a checkpoint refused above leaves the run directory as it was.
    lock = lock_run(run_dir, dist.is_main)
    if resume_from is not None:
        if dist.is_main:
            ranks = f" on {dist.world_size} ranks" if dist.enabled else ""
            print(f"mmrl train: resuming {run_dir} from checkpoint {resume_from.name}{ranks}", file=sys.stderr)
        for name in set_aside_newer(resume_from.parent, resume_from.name) if dist.is_main else []:
            print(f"mmrl train: checkpoint {name} is newer than the one resumed from: moved to checkpoints/abandoned/",
                  file=sys.stderr)
        if getattr(algo, "clock", None) is not None and algo.clock.remaining() == 0 and progress.update < total_updates and cfg.algo.lr_schedule == "linear" \
                and dist.is_main:
            print("mmrl train: warning: this run's linear learning-rate schedule has annealed to 0, so further updates "
                  "change nothing; add algo.lr_schedule=constant to go on at algo.lr", file=sys.stderr)
    if dist.is_main:  # a resumed run's too: overrides such as total_steps change it
        trainable, total = parameter_counts(policy)
        print(f"mmrl train: {type(policy).__name__}, {total:,} parameters, {trainable:,} trainable ({trainable / total:.1%})")
        write_text_atomic(run_dir / "config.yaml", config_yaml)
        if compression_done:
            write_json(run_dir / "compression.json", compression_done)
    callbacks += attach(cfg, policy, algo, teacher, total_updates, progress.steps)
    callbacks += attach_naming(cfg.model, policy, algo, env)  # model.text_readout=names: its naming loss
    algo.watch(callbacks)
    if cfg.hardware.compile:
        policy.compile(mode=cfg.hardware.compile_mode)
    if monitor is None:
        final_step = (progress.steps + (total_updates - progress.update) * algo.steps_per_update * dist.world_size
                      if algo.steps_per_update else total_updates)
        monitor = Monitor(cfg, run_dir, final_step, start=(progress.update, position(progress, algo)),
                          skipped_before=algo.skipped_steps) if dist.is_main else SilentMonitor()
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
        # "collector": the algorithm's data source (named for the on-policy collector, so older checkpoints resume)
        state = {"algo": algo.state_dict(), "collector": algo.source_state_dict(), "progress": dataclasses.asdict(progress),
                 "device_type": device.type, "rng": global_rng_state(), "world_size": dist.world_size}
        save_checkpoint(run_dir / "checkpoints", progress.update, {k: m.state_dict() for k, m in modules.items()},
                        state, config_yaml, cfg.checkpoint.keep_last, structures={POLICY: structure_note(policy)})

    stop = StopRequests()
    stopped_by, stopping, reached = None, False, False
    with monitor, stop, contextlib.closing(algo):  # closing: the algorithm stops what it runs (A3C's workers) however the run ends
        while progress.update < total_updates and not reached and not stopping and stopped_by is None:
            update_start = time.perf_counter()
            # 1-2. One step of the algorithm: whatever it is (on-policy: collect a rollout with the current
            #      policy, callbacks may label it, then the losses, backward, optimiser steps).
            env_steps, metrics = algo.train_step()
            metrics = dist.mean_metrics(metrics)
            progress.update += 1
            progress.steps += env_steps * dist.world_size  # env steps of all ranks together
            if algo.skipped_in_a_row >= cfg.numerics.max_skipped_in_a_row:
                raise NumericalFault(
                    f"{algo.skipped_in_a_row} gradient steps in a row had a non-finite loss or gradient "
                    f"(numerics.max_skipped_in_a_row={cfg.numerics.max_skipped_in_a_row}); stopped at update {progress.update}"
                )

            # 3. Report; evaluate on validation levels now and then; let callbacks watch (and stop).
            elapsed = progress.wall_seconds + time.perf_counter() - session_start
            stopped_by = notify(callbacks, "on_update", progress, metrics)  # callbacks may add metrics (e.g. sparsity)
            episodes = dist.gather(algo.take_episodes())
            progress.episodes += sum(len(returns) for returns, _, _ in episodes)
            monitor.log_update(progress.update, position(progress, algo), metrics, episodes,
                               algo.skipped_steps, progress.steps / elapsed,
                               time.perf_counter() - update_start, algo.module_grad_norms)
            last = progress.update == total_updates
            if evaluation_due(progress, algo) or last:
                progress.next_eval += cfg.eval.every_steps
                eval_start = time.perf_counter()
                results = run_evaluations(policy, cfg, device, autocast, monitor, progress, elapsed, position(progress, algo))
                progress.eval_seconds += time.perf_counter() - eval_start
                reason = notify(callbacks, "on_evaluation", progress, results)  # every callback sees every evaluation
                stopped_by = stopped_by or reason
                if cfg.eval.stop_at is not None:  # every rank decides alike (ranks stop at the same update)
                    reached = dist.any(results["validation"].get("success_rate", math.nan) >= cfg.eval.stop_at)
                last = last or reached  # eval.stop_at reached: the run is done, it ends here as at its last update
            if last:  # the final report: held-out levels, once per run (or per extension of it), or at eval.stop_at
                eval_start = time.perf_counter()
                progress.heldout = evaluate(policy, cfg, device, "heldout", cfg.eval.episodes, cfg.eval.deterministic,
                                            autocast)
                progress.eval_seconds += time.perf_counter() - eval_start
                monitor.log_heldout(position(progress, algo), progress.heldout)

            # 4. Checkpoint now and then, at the end, and before any early stop (a signal on any rank
            #    stops every rank at this same update).
            stopping = dist.any(stop.requested)
            if last or stopped_by or stopping:
                algo.close()  # the run ends here: stop what the algorithm runs beside the trainer (A3C's workers)
            if progress.update % cfg.checkpoint.every_updates == 0 or last or stopped_by or stopping:
                checkpoint()
        if saved_update != progress.update:  # stopped by a signal between checkpoints
            checkpoint()

    summary = make_summary(progress, algo, device, run_dir, stop_reason(stop, stopping, stopped_by), reached)
    if dist.is_main:
        save_weights(policy.state_dict(), run_dir / "model.safetensors", structure_note(policy))
        if cfg.finetune.lora_merge and has_lora(policy):  # a plain policy beside the adapters' checkpoints
            merged = copy.deepcopy(policy)
            merge_lora(merged)
            save_weights(merged.state_dict(), run_dir / "model_merged.safetensors")
        write_json(run_dir / "summary.json", summary)
    dist.close()  # every rank leaves together, after rank 0 has written
    if lock is not None:
        lock.release()
    return summary


def stop_reason(stop: StopRequests, stopping: bool, stopped_by: str | None) -> str | None:
    """What stopped the run early: this rank's signal, another rank's, a callback, or nothing."""
    if stop.requested:
        return stop.name
    if stopping:
        return "SIGTERM"  # another rank was signalled (torchrun passes a stop to every rank)
    return stopped_by


def position(progress: Progress, algo) -> int:
    """Where the run stands on the monitor's x-axis: env steps, or train steps for an algorithm that
    plays none (behaviour cloning learns from a dataset)."""
    return progress.steps if algo.steps_per_update else progress.update


def evaluation_due(progress: Progress, algo) -> bool:
    """Time for a periodic evaluation: every `eval.every_steps` env steps (`progress.next_eval`), or
    every ``algo.eval_every_updates`` train steps for an algorithm that plays no env steps."""
    if algo.steps_per_update:
        return progress.steps >= progress.next_eval
    return progress.update % algo.eval_every_updates == 0


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


def make_summary(progress: Progress, algo, device: torch.device, run_dir: Path, stopped_by: str | None,
                 reached_stop_at: bool) -> dict:
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
        "updates_per_second": progress.update / wall if wall else nan,
        "learns_from_data_only": algo.steps_per_update == 0,  # BC: no env steps; speed is in updates
        "skipped_steps": algo.skipped_steps,
        "parameters_trainable": parameter_counts(algo.policy)[0],
        "parameters_total": parameter_counts(algo.policy)[1],
        "device": str(device),
        "run_dir": str(run_dir),
        "stopped_by": stopped_by,
        "reached_stop_at": reached_stop_at,  # ended early because validation success reached eval.stop_at: done
        "evaluations": progress.evaluations,
    }


def structure_note(policy: torch.nn.Module) -> str | None:
    """The checkpoint header note of a policy whose structure is not its config's: pruned or
    factorised, or with LoRA adapters (how to rebuild them)."""
    return STRUCTURE_NOTE if is_structured(policy) else lora_note(policy)


def parameters_finite(module: torch.nn.Module) -> bool:
    """True when every parameter is finite (one fused reduction, one sync)."""
    return math.isfinite(global_norm([p.detach() for p in module.parameters()]))


def run_evaluations(policy, cfg: TrainConfig, device, autocast, monitor: Monitor, progress: Progress,
                    elapsed: float, at: int) -> dict:
    """Evaluate on validation levels (and on the training levels when they are a finite subset); log it
    at x-axis position `at`."""
    validation = evaluate(policy, cfg, device, "validation", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    on_train = None
    if trains_on_level_subset(cfg.data):
        on_train = evaluate(policy, cfg, device, "train", cfg.eval.episodes, cfg.eval.deterministic, autocast)
    monitor.log_eval(at, validation, on_train)
    results = {"step": at, "updates": progress.update, "episodes": progress.episodes, "validation": validation, "train": on_train,
               "wall_seconds": elapsed}
    progress.evaluations.append(results)
    return results


def restore(path: Path, modules: dict, algo, with_source: bool, progress: Progress, device: torch.device) -> None:
    """Load checkpoint `path` into the live objects (modules, algorithm, its data source, counters, RNGs);
    `with_source` False: the envs start afresh (several ranks: the saved env state is one rank's)."""
    state = checked_state(path)  # counters and global RNG states
    load_modules(path, modules)
    # The algorithm's and the data source's state must be what these live objects hold (types,
    # dtypes, shapes): meta.json has no checksum of its own, and a wrong shape fails only later.
    other_device = state.get("device_type", device.type) != device.type
    problem = state_mismatch(state["algo"], algo.state_dict(), "algo")
    if problem is None and with_source:
        problem = state_mismatch(state["collector"], algo.source_state_dict(), "collector", other_device)
    try:
        if problem is None:
            algo.load_state_dict(state["algo"])
            problem = next(filter(None, (optimizer_state_mismatch(g.optimizer, "algo.optimizer")
                                         for g in getattr(algo, "gradients", []))), None)
        if problem is None and with_source:
            algo.load_source_state_dict(state["collector"])
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError) as e:  # what the loaders refuse
        problem = str(e).splitlines()[0] if str(e) else type(e).__name__
    if problem is not None:
        raise CheckpointError(f"{path}: the training state does not fit this run's algorithm and env ({problem})")
    for field in dataclasses.fields(progress):
        if field.name in state["progress"]:
            setattr(progress, field.name, state["progress"][field.name])
    if not with_source:
        return
    set_global_rng_state(state["rng"])
    if state.get("device_type", device.type) != device.type:
        print(f"mmrl train: warning: resuming on {device.type} a run checkpointed on {state['device_type']}: the env and "
              f"action-sampling random streams restart, so the run continues but not bit-identically", file=sys.stderr)
