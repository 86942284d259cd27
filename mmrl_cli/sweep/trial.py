"""Run one Optuna trial as an `mmrl train` run, and the worker loop that runs trials until the
sweep's budget is used up.

A trial is a normal run directory (`<sweep>/trials/<number>/`, readable by `mmrl eval` and
TensorBoard; with `hpo.objective.seeds` = k > 1, one per seed in `<number>/seed<s>/`, trained one
after another and combined by `hpo.objective.aggregate`) trained by `train()` with two callbacks: `Reporter` hands every validation
evaluation to Optuna and stops the run when the pruner says so; `Heartbeat` stamps the trial so
that a dead worker is noticed (see `study.py`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..compose import compose_train_config
from ..config import ConfigError, TrainConfig
from ..trainer import NumericalFault, StopTraining, train
from .settings import Param, SweepConfig, parse_space
from .study import HOST, budget_left, counted_trials, fail_stale_trials, mask_secrets, open_study, set_attr
from ..text import tokenizer_for

TRIALS_DIR = "trials"


def trial_dir(sweep_dir: Path, number: int) -> Path:
    """The run directory of trial `number`."""
    return sweep_dir / TRIALS_DIR / f"{number:04d}"


def metric_of(results: dict, metric: str) -> float:
    """The objective's value in one evaluation's results (validation levels)."""
    validation = results["validation"]
    if metric == "validation_success":
        if validation.get("success_rate") is None:
            raise ConfigError("hpo.objective.metric: success is not defined for this env; use "
                              "hpo.objective.metric=validation_return")
        return float(validation["success_rate"])
    return float(validation["return_mean"])


class Reporter:
    """Reports each validation evaluation to Optuna (step = env steps); stops a pruned trial."""

    def __init__(self, trial: optuna.Trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.pruned_at: int | None = None

    def on_evaluation(self, progress, results: dict) -> None:
        value = metric_of(results, self.metric)
        if not self.prune:
            return
        self.trial.report(value if math.isfinite(value) else float("-inf"), progress.steps)
        if self.trial.should_prune():
            self.pruned_at = progress.steps
            raise StopTraining(f"pruned by Optuna at step {progress.steps:,}")


class Heartbeat:
    """Stamps the running trial (steps, time) every `seconds`; exits when the sweep process died."""

    def __init__(self, study: optuna.Study, number: int, seconds: float, parent_pid: int | None):
        self.study, self.number, self.seconds, self.parent_pid = study, number, seconds, parent_pid
        self.last = 0.0
        self.steps_before = 0  # env steps of the trial's earlier seeds (a trial with several seeds)

    def on_update(self, progress, metrics: dict) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            os._exit(137)  # the sweep was killed: die like it, leaving the trial for the next run to retry
        now = time.time()
        if now - self.last >= self.seconds:
            self.last = now
            set_attr(self.study, self.number, "heartbeat", now)
            set_attr(self.study, self.number, "steps", self.steps_before + progress.steps)


def trial_config(config: SweepConfig, params: list[Param], values: dict, seed: int) -> tuple[list[str], TrainConfig]:
    """The `mmrl train` overrides and config of one trial."""
    overrides = list(config.hpo.train) + [p.override(values[p.key]) for p in params] + [f"seed={seed}"]
    if config.hpo.n_workers > 1 and not any(o.startswith("hardware.threads=") for o in overrides):
        overrides.append(f"hardware.threads={max(1, (os.cpu_count() or 1) // config.hpo.n_workers)}")
    overrides.append(f"runs_root={config.runs_root}")
    return overrides, compose_train_config(overrides)


def parameter_count(cfg: TrainConfig) -> int:
    """Parameters of the agent `cfg` builds (on the meta device: nothing allocated)."""
    import torch

    from ..envs.spec import observation_spec_of, patch_size_of
    from ..models import build_agent

    spec, actions = observation_spec_of(cfg.data, tokenizer_for(cfg.model))
    patch = patch_size_of(cfg.data, spec) if cfg.model.type == "vit-gpt2" else 1
    with torch.device("meta"):
        policy = build_agent(cfg, spec, actions, patch)
    return sum(p.numel() for p in policy.parameters())


def write_trial_json(path: Path, data: dict) -> None:
    """Write a trial's record (`trial.json`: parameters, state, values) into its run directory."""
    from ..checkpoint import write_text_atomic

    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / "trial.json", json.dumps(data, indent=2, default=str))


def trial_seeds(hpo, number: int) -> list[int]:
    """The seeds trial `number` trains with: `hpo.objective.seeds` of them, never shared with
    another trial (one seed per trial: `first_seed + number`, as sweeps always had)."""
    k = hpo.objective.seeds
    return [hpo.first_seed + number * k + i for i in range(k)]


def seed_run_dir(sweep_dir: Path, number: int, seed: int, seeds: int) -> Path:
    """A trial's run directory for one seed: the trial's directory itself when it trains one seed,
    `<trial>/seed<s>/` when it trains several."""
    return trial_dir(sweep_dir, number) if seeds == 1 else trial_dir(sweep_dir, number) / f"seed{seed}"


def aggregate(values: list[float], how: str, higher_is_better: bool) -> float:
    """One objective value from a trial's per-seed values: `worst` (the lowest metric, the highest
    cost), `mean` or `median`."""
    if how == "worst":
        return min(values) if higher_is_better else max(values)
    ordered = sorted(values)
    if how == "mean":
        return sum(values) / len(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def run_objectives(hpo, summary: dict, cfg: TrainConfig) -> list[float]:
    """The objective values of one finished run: the metric of its last validation evaluation, then
    the second objective (wall seconds or parameters) for a multi-objective study."""
    values = [metric_of(summary["evaluations"][-1], hpo.objective.metric)]
    if hpo.objective.second == "wall_seconds":
        values.append(summary["wall_seconds"])
    elif hpo.objective.second == "parameters":
        values.append(float(parameter_count(cfg)))
    return values


def run_trial(study: optuna.Study, config: SweepConfig, params: list[Param], sweep_dir: Path,
              parent_pid: int | None = None) -> TrialState:
    """Ask Optuna for a trial, train it (once per seed, one seed after another), tell Optuna how it
    went; returns its final state. Only the first seed's evaluations go to the pruner."""
    hpo = config.hpo
    trial = study.ask()
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
    if counted_trials(earlier) >= hpo.budget.trials:  # another worker took the last slot meanwhile
        trial.set_user_attr("surplus", True)
        trial.set_user_attr("failed_because", "not run: other workers had used up the trial budget")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    for key, value in (("worker_host", HOST), ("worker_pid", os.getpid()), ("heartbeat", time.time())):
        trial.set_user_attr(key, value)
    values = {p.key: p.suggest(trial) for p in params}
    seeds = trial_seeds(hpo, trial.number)
    run_dir = trial_dir(sweep_dir, trial.number)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("seeds", seeds)
    record = {"number": trial.number, "params": values, "run_dir": str(run_dir), "seeds": seeds}
    try:
        runs = [(seed, *trial_config(config, params, values, seed)) for seed in seeds]
    except ConfigError as e:
        trial.set_user_attr("failed_because", str(e))
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    trial.set_user_attr("overrides", runs[0][1])
    reporter = Reporter(trial, hpo.objective.metric, prune=len(hpo.directions) == 1)
    heartbeat = Heartbeat(study, trial.number, hpo.heartbeat_seconds, parent_pid)
    per_seed, steps, wall = [], 0, 0.0
    for index, (seed, overrides, cfg) in enumerate(runs):
        seed_dir = seed_run_dir(sweep_dir, trial.number, seed, len(seeds))
        print(f"trial {trial.number}" + (f" seed {seed}" if len(seeds) > 1 else "") + f": {' '.join(overrides)}",
              flush=True)
        callbacks = [heartbeat, reporter] if index == 0 else [heartbeat]
        heartbeat.steps_before = steps
        try:
            summary = train(cfg, seed_dir, callbacks=callbacks)
        except Exception as e:  # a numerical fault, an env that raised, out of memory, ...: this trial failed, not the sweep
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not isinstance(e, (NumericalFault, ConfigError)):  # into the worker's log, passwords masked
                print(mask_secrets(traceback.format_exc(), hpo.storage), file=sys.stderr, end="", flush=True)
            reason = mask_secrets(reason, hpo.storage) + (f" (seed {seed})" if len(seeds) > 1 else "")
            trial.set_user_attr("failed_because", reason)
            study.tell(trial, state=TrialState.FAIL)
            write_trial_json(run_dir, {**record, "state": "FAIL", "failed_because": reason})
            return TrialState.FAIL
        steps, wall = steps + summary["steps"], wall + summary["wall_seconds"]
        trial.set_user_attr("steps", steps)
        trial.set_user_attr("wall_seconds", wall)
        if summary["stopped_by"] and reporter.pruned_at is None:  # SIGTERM / Ctrl-C: run it again later
            trial.set_user_attr("failed_because", f"interrupted ({summary['stopped_by']})")
            trial.set_user_attr("retried_as", "next enqueued trial")
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(values, user_attrs={"retry_of": trial.number, "retries": 0})
            write_trial_json(run_dir, {**record, "state": "FAIL", "failed_because": "interrupted"})
            return TrialState.FAIL
        if reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", reporter.pruned_at)
            study.tell(trial, state=TrialState.PRUNED)
            write_trial_json(run_dir, {**record, "state": "PRUNED", "pruned_at_step": reporter.pruned_at,
                                       "steps": steps})
            return TrialState.PRUNED
        per_seed.append({"seed": seed, "run_dir": str(seed_dir), "values": run_objectives(hpo, summary, cfg),
                         "steps": summary["steps"], "heldout_success_rate": summary["heldout_success_rate"],
                         "heldout_return": summary["heldout_return"]})
    objectives = [aggregate([run["values"][i] for run in per_seed], hpo.objective.aggregate, higher_is_better=i == 0)
                  for i in range(len(hpo.directions))]
    if len(seeds) > 1:
        trial.set_user_attr("seed_values", [run["values"] for run in per_seed])
    study.tell(trial, objectives)
    first = per_seed[0]
    write_trial_json(run_dir, {**record, "state": "COMPLETE", "values": objectives, "steps": steps,
                               "heldout_success_rate": first["heldout_success_rate"],
                               "heldout_return": first["heldout_return"],
                               **({"per_seed": per_seed} if len(seeds) > 1 else {})})
    return TrialState.COMPLETE


def work(sweep_dir: Path, deadline: float | None, parent_pid: int | None) -> None:
    """A worker: run trials of the sweep in `sweep_dir` until its budget is used up."""
    from .run import load_sweep_config

    config = load_sweep_config(sweep_dir)
    params = parse_space(config.hpo.space)
    study = open_study(config.hpo, sweep_dir)
    while True:
        for note in fail_stale_trials(study, config.hpo):
            print(note, flush=True)
        reason = budget_left(study, config.hpo, deadline)
        if reason is not None:
            print(f"worker {os.getpid()}: done: {reason}", flush=True)
            return
        run_trial(study, config, params, sweep_dir, parent_pid)


def main(argv: list[str]) -> None:
    """A worker process (`python -m mmrl_cli.sweep.trial <sweep dir> <deadline|none> <parent pid>`);
    an error ends it with its traceback in the worker's log, passwords masked."""
    directory, deadline_arg, parent = argv[:3]
    try:
        work(Path(directory), None if deadline_arg == "none" else float(deadline_arg), int(parent))
    except Exception:
        print(mask_secrets(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
