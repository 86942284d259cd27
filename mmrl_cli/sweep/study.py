"""The Optuna study behind a sweep: storage, sampler and pruner from the config, the shared trial
budget, and trials whose worker died.

Storage (`hpo.storage`): null = SQLite in the sweep directory (one machine; several local workers
work, SQLite serialises their writes); ``journal`` = Optuna's journal file in the sweep directory
(several processes, or machines sharing a filesystem, no database server); any other value is an
RDB URL (``postgresql://...``, ``mysql+pymysql://...``, ``sqlite:///...``) for several machines.

Dead workers, the same rule for every storage: a worker stamps each running trial with its host,
its PID and a heartbeat time (`hpo.heartbeat_seconds`, from the trainer's update callback). A
RUNNING trial is stale when its worker's PID is gone on this host, or when its heartbeat is older
than `hpo.grace_seconds` (any host). Whoever finds it (a worker before each trial, the sweep at
start and while it waits) marks it FAIL and, up to `hpo.max_retries` times, enqueues its
parameters again as a new trial, so no trial stays RUNNING forever and none is lost.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from .settings import HpoConfig

# Trial states that use up the trial budget (a FAIL whose parameters were enqueued again does not:
# its retry does, once a worker starts it; a WAITING trial is the next one asked for).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
HOST = socket.gethostname()


def storage_for(hpo: HpoConfig, sweep_dir: Path):
    """The Optuna storage `hpo.storage` names (files inside `sweep_dir`)."""
    if hpo.storage in (None, "sqlite"):
        url = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
        # Several local workers share one SQLite file: wait for its lock rather than fail.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if hpo.storage == "journal":
        backend = optuna.storages.journal.JournalFileBackend(str(sweep_dir / "journal.log"))
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(hpo.storage)


def sampler_for(hpo: HpoConfig) -> optuna.samplers.BaseSampler:
    """The seeded sampler `hpo.sampler` names."""
    config = hpo.sampler
    if config.type == "tpe":  # Optuna 5: multivariate TPE with the constant liar for running trials
        return optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.n_startup_trials,
                                          multivariate=True, constant_liar=True)
    if config.type == "gp":  # Gaussian-process Bayesian optimisation (needs scipy)
        return optuna.samplers.GPSampler(seed=config.seed, n_startup_trials=config.n_startup_trials)
    if config.type == "nsga2":  # evolutionary, for multi-objective studies
        return optuna.samplers.NSGAIISampler(seed=config.seed)
    return optuna.samplers.RandomSampler(seed=config.seed)


def pruner_for(hpo: HpoConfig) -> optuna.pruners.BasePruner:
    """The pruner `hpo.pruner` names; steps are environment steps."""
    config = hpo.pruner
    if config.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=config.n_startup_trials, n_warmup_steps=config.warmup_steps)
    if config.type == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=config.min_resource or "auto",
                                                      reduction_factor=config.reduction_factor)
    if config.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=config.min_resource or 1, reduction_factor=config.reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(hpo: HpoConfig, sweep_dir: Path) -> optuna.Study:
    """Create the study, or load it when it exists (that is how a sweep resumes)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage_for(hpo, sweep_dir), study_name=hpo.study_name,
                               sampler=sampler_for(hpo), pruner=pruner_for(hpo), directions=hpo.directions,
                               load_if_exists=True)


def set_attr(study: optuna.Study, number: int, key: str, value) -> None:
    """Set a user attribute on trial `number`, also while it runs in another process or after it ended."""
    storage = study._storage  # Optuna exposes per-trial attributes only through the storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    storage.set_trial_user_attr(trial_id, key, value)


# ---------------------------------------------------------------------------- budget
def counted_trials(trials: list[FrozenTrial]) -> int:
    """Trials that use up the trial budget."""
    return sum(t.state in COUNTED or (t.state == TrialState.FAIL and not {"retried_as", "surplus"} & set(t.user_attrs))
               for t in trials)


def steps_spent(trials: list[FrozenTrial]) -> int:
    """Environment steps trained by every trial so far (as last reported by their workers)."""
    return sum(int(t.user_attrs.get("steps", 0)) for t in trials)


def budget_left(study: optuna.Study, hpo: HpoConfig, deadline: float | None) -> str | None:
    """Why no new trial may start (trials, steps or wall time used up), or None."""
    trials = study.get_trials(deepcopy=False)
    if counted_trials(trials) >= hpo.budget.trials:
        return f"the trial budget ({hpo.budget.trials}) is used up"
    if hpo.budget.total_steps is not None and steps_spent(trials) >= hpo.budget.total_steps:
        return f"the step budget ({hpo.budget.total_steps:,} env steps) is used up"
    if deadline is not None and time.time() >= deadline:
        return f"the wall-time budget (hpo.budget.wall_seconds={hpo.budget.wall_seconds}) is used up"
    return None


# ------------------------------------------------------------------------ dead workers
def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(trial: FrozenTrial, grace_seconds: float, now: float) -> str | None:
    """Why a RUNNING trial's worker is considered dead, or None while it seems alive."""
    attrs = trial.user_attrs
    host, pid, beat = attrs.get("worker_host"), attrs.get("worker_pid"), attrs.get("heartbeat")
    if host == HOST and pid is not None and not pid_alive(int(pid)):
        return f"its worker (pid {pid}) is gone"
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    last = beat if beat is not None else started
    if now - last > grace_seconds:
        return f"no heartbeat for {now - last:.0f} s (hpo.grace_seconds={grace_seconds:g})"
    return None


def fail_stale_trials(study: optuna.Study, hpo: HpoConfig) -> list[str]:
    """Mark trials whose worker died FAIL and enqueue their parameters again; lines saying what was done."""
    notes, now = [], time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(trial, hpo.grace_seconds, now)
        if reason is None:
            continue
        retries = int(trial.user_attrs.get("retries", 0))
        retry = retries < hpo.max_retries
        try:  # attributes first: a finished trial takes none
            set_attr(study, trial.number, "failed_because", reason)
            if retry:
                set_attr(study, trial.number, "retried_as", "next enqueued trial")
            study.tell(trial.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):  # another process got there first
            continue
        if retry:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1})
            notes.append(f"trial {trial.number} failed ({reason}); its parameters run again as a new trial")
        else:
            notes.append(f"trial {trial.number} failed ({reason}); hpo.max_retries={hpo.max_retries} retries used, not retried")
    return notes
