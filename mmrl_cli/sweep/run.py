"""`mmrl sweep`: prepare the sweep directory, start the workers, show the trials live, report.

The sweep directory (`<runs_root>/sweeps/<study_name>` unless `sweep_dir=` says otherwise):
`sweep.yaml` (the config), `study.db` or `journal.log` (the Optuna study), `trials/<n>/` (one
run directory per trial), `workers/<host>-<pid>-<i>.log`, and at the end `plots/`, `tb/` (hparams),
`retrain/`, `exp/<study_name>.yaml` (the best configuration as an `exp` preset),
`results.json` and `report.md`. Running the same command again resumes the study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf
from optuna.trial import TrialState

from ..checkpoint import write_text_atomic
from ..config import ConfigError
from .settings import SweepConfig, validate_sweep
from .study import (HOST, budget_left, counted_trials, fail_stale_trials, mask_secrets, open_study, saved_storage,
                    steps_spent, storage_environment)

CONFIG_FILE = "sweep.yaml"
# Memory of one idle worker process (Python, torch, Optuna imported; ~160 MiB private, measured)
# before its trial allocates anything: what N workers cost at least.
WORKER_BYTES = 160 * 2**20
# Keys that define what the study measures: a resumed sweep must keep them (budgets may change).
FIXED_KEYS = ("study_name", "train", "space", "objective")
POLL_SECONDS = 1.0


def load_sweep_config(sweep_dir: Path) -> SweepConfig:
    """The config saved in a sweep directory."""
    return validate_sweep(OmegaConf.load(sweep_dir / CONFIG_FILE))


def check_resumable(config: SweepConfig) -> None:
    """A sweep directory that exists must hold the same study (same trials, space and objective)."""
    saved = Path(config.directory) / CONFIG_FILE
    if not saved.exists():
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(saved))["hpo"]
    except Exception as e:
        raise ConfigError(f"sweep_dir: {saved} is not a readable sweep config ({str(e).splitlines()[0]})") from None
    new = OmegaConf.to_container(OmegaConf.structured(config))["hpo"]
    for key in FIXED_KEYS:
        if old.get(key) != new.get(key):
            raise ConfigError(f"hpo.{key}: the study in {config.directory} was started with a different value; "
                              f"resume it unchanged or pick another hpo.study_name")


def check_workers_fit(config: SweepConfig) -> None:
    """`hpo.n_workers` idle worker processes fit in the memory available (before any trial runs)."""
    from ..preflight import available_memory

    workers, available = config.hpo.n_workers, available_memory()
    if workers * WORKER_BYTES > available:
        raise ConfigError(f"hpo.n_workers: {workers} worker processes need at least {workers * WORKER_BYTES / 2**30:.1f} GiB "
                          f"({WORKER_BYTES // 2**20} MiB each before training), {available / 2**30:.1f} GiB is available; "
                          f"expected at most {max(1, available // WORKER_BYTES)}")


def saved_config(config: SweepConfig) -> str:
    """sweep.yaml's text: the config as given, but a storage password masked (never on disk)."""
    data = OmegaConf.to_container(OmegaConf.structured(config))
    data["hpo"]["storage"] = saved_storage(config.hpo.storage)
    return OmegaConf.to_yaml(OmegaConf.create(data))


def prepare_sweep_dir(config: SweepConfig) -> Path:
    """Create the sweep directory (or check that a resumed one measures the same thing); save the config."""
    check_resumable(config)
    sweep_dir = Path(config.directory)
    saved = sweep_dir / CONFIG_FILE
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(saved, saved_config(config))
    return sweep_dir


def worker_log(sweep_dir: Path | str, index: int) -> Path:
    """The log of this `mmrl sweep` process's worker `index`: named by host and process, so the
    workers of a second `mmrl sweep` on the same study (this machine or another) log apart."""
    return Path(sweep_dir) / "workers" / f"{HOST}-{os.getpid()}-{index}.log"


def start_workers(config: SweepConfig, sweep_dir: Path, deadline: float | None) -> list[subprocess.Popen]:
    """Start `hpo.n_workers` worker processes on the study; each logs to `worker_log`."""
    (sweep_dir / "workers").mkdir(exist_ok=True)
    workers = []
    for index in range(config.hpo.n_workers):
        with open(worker_log(sweep_dir, index), "a") as log:
            command = [sys.executable, "-m", "mmrl_cli.sweep.trial", str(sweep_dir),
                       "none" if deadline is None else repr(deadline), str(os.getpid())]
            # Own session: a terminal's Ctrl-C reaches the sweep only, which stops each worker once.
            # An inline storage password reaches the worker in its environment: sweep.yaml masks it.
            env = {**os.environ, "PYTHONUNBUFFERED": "1", **storage_environment(config.hpo.storage)}
            workers.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True))
    return workers


def fmt(value) -> str:
    """A compact cell for the trials table."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trials_table(study, config: SweepConfig, started: float, last: int = 12):
    """The live view: the newest trials, the best so far, and the budget used."""
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    hpo = config.hpo
    table = Table(title=f"mmrl sweep {hpo.study_name}: {hpo.sampler.type} sampler, {hpo.pruner.type} pruner")
    for column in ["trial", "state", hpo.objective.metric] + ([hpo.objective.second] if hpo.objective.second else []) \
            + ["steps"]:
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("parameters", overflow="fold")
    for t in trials[-last:]:
        values = list(t.values) if t.values else [None] * len(hpo.directions)
        state = t.state.name.lower() + (f" @{t.user_attrs['pruned_at_step']:,}" if t.state == TrialState.PRUNED else "")
        params = "  ".join(f"{key.split('.')[-1]}={fmt(value)}" for key, value in t.params.items())
        table.add_row(str(t.number), state, *[fmt(v) for v in values], f"{int(t.user_attrs.get('steps', 0)):,}", params)
    by_state = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: t.values[0], default=None)
    table.caption = (f"{counted_trials(trials)}/{hpo.budget.trials} trials: {by_state[TrialState.COMPLETE]} complete, "
                     f"{by_state[TrialState.PRUNED]} pruned, {by_state[TrialState.FAIL]} failed, "
                     f"{by_state[TrialState.RUNNING]} running | {steps_spent(trials):,} env steps | "
                     f"{time.time() - started:.0f} s" + (f" | best: trial {best.number} = {best.values[0]:.4g}" if best else ""))
    return table


def watch(study, config: SweepConfig, workers: list[subprocess.Popen], started: float) -> None:
    """Show the trials until every worker has finished; retire trials of dead workers meanwhile."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(trials_table(study, config, started), console=console, refresh_per_second=2,
              auto_refresh=console.is_terminal) as live:
        next_check = time.time() + config.hpo.grace_seconds
        while any(w.poll() is None for w in workers):
            time.sleep(POLL_SECONDS)
            if time.time() >= next_check:  # a worker on another machine may have died
                next_check = time.time() + config.hpo.grace_seconds
                for note in fail_stale_trials(study, config.hpo):
                    console.print(f"mmrl sweep: {note}")
            live.update(trials_table(study, config, started))
        live.update(trials_table(study, config, started, last=40))
    console.print()
    failed = [i for i, w in enumerate(workers) if w.returncode not in (0, None)]
    for index in failed:
        print(f"mmrl sweep: warning: worker {index} exited with status {workers[index].returncode} "
              f"(see {worker_log(config.directory, index)})", file=sys.stderr)


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """Ask the workers to stop (their trials checkpoint and are retried on resume); wait for them."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()


def run_sweep(config: SweepConfig) -> dict:
    """The whole sweep: resume or start the study, run trials to the budget, retrain the best, report.

    An unexpected error ends the command with its traceback, passwords masked, and status 1: an
    exception reaching Hydra would print the command line's overrides, an inline password included.
    """
    try:
        return run_study(config)
    except Exception as e:
        storage = config.hpo.storage
        print(mask_secrets(traceback.format_exc(), storage), file=sys.stderr, end="")
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"mmrl sweep: error: {mask_secrets(reason, storage)}", file=sys.stderr)
        raise SystemExit(1) from None


def run_study(config: SweepConfig) -> dict:
    """`run_sweep`'s work, exceptions unmasked."""
    from .report import finish

    sweep_dir = prepare_sweep_dir(config)
    study = open_study(config.hpo, sweep_dir)
    for note in fail_stale_trials(study, config.hpo):
        print(f"mmrl sweep: {note}", file=sys.stderr)
    started = time.time()
    deadline = started + config.hpo.budget.wall_seconds if config.hpo.budget.wall_seconds else None
    reason = budget_left(study, config.hpo, deadline)
    if reason is None:
        workers = start_workers(config, sweep_dir, deadline)
        try:
            watch(study, config, workers, started)
        except KeyboardInterrupt:
            stop_workers(workers)
            print(f"\nmmrl sweep: stopped; run the same command to resume ({sweep_dir})", file=sys.stderr)
            raise SystemExit(130) from None
    else:
        print(f"mmrl sweep: no new trials: {reason}", file=sys.stderr)
    return finish(study, config, sweep_dir)
