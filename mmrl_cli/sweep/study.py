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

Secrets: a storage password never reaches a message, a log or a file. It comes from
``$MMRL_STORAGE_PASSWORD`` when the URL has none, or inline (``postgresql://user:pw@host/db``,
also through ``${oc.env:VAR}``); every message shows the URL as ``postgresql://user:***@host/db``,
`sweep.yaml` records it that way too, and the workers get the password through their environment.

Seeds: each trial's sampler is seeded with a hash of (`hpo.sampler.seed`, the trial's number).
Trial numbers are handed out by the storage, one per trial, so workers, machines and re-runs of
the command never draw the same random stream, and trial n's start-up draw is the same whichever
worker runs it.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import ConfigError
from .settings import HpoConfig, short_path

# Trial states that use up the trial budget (a FAIL whose parameters were enqueued again does not:
# its retry does, once a worker starts it; a WAITING trial is the next one asked for).
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
HOST = socket.gethostname()

# ---------------------------------------------------------------------------- storage
PASSWORD_VARIABLE = "MMRL_STORAGE_PASSWORD"  # the storage password, for URLs given without one
MASK = "***"  # what a password looks like in messages and in sweep.yaml
STORAGE_TIMEOUT_SECONDS = 5.0  # how long the check before a sweep waits for a database server
FILE_STORAGES = (None, "sqlite", "journal")  # files inside the sweep directory
# A password in any URL-like text: scheme://user:<password>@ (greedy: an unescaped '@' in the
# password must not leave its tail visible).
URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^:/@\s]*):(\S*)@")
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000",
                   "pymysql": "PyMySQL", "MySQLdb": "mysqlclient", "mysql": "mysql-connector-python",
                   "pyodbc": "pyodbc", "oracledb": "oracledb"}
# Each driver's own name for a connection timeout (the rest rely on the TCP check alone).
TIMEOUT_ARGUMENTS = {"psycopg": "connect_timeout", "psycopg2": "connect_timeout", "pg8000": "timeout",
                     "pymysql": "connect_timeout", "mysqldb": "connect_timeout", "mysqlconnector": "connection_timeout"}
SQLITE_HEADER = b"SQLite format 3\x00"


def inline_password(storage: str | None) -> str | None:
    """The password written in an RDB storage URL, if any (not a masked one)."""
    match = URL_PASSWORD.search(storage or "")
    return match.group(2) if match and match.group(2) not in ("", MASK) else None


def mask_secrets(text: str, storage: str | None = None) -> str:
    """`text` with every URL password, the inline password of `storage` and $MMRL_STORAGE_PASSWORD
    replaced by ***; drivers may echo a password outside a URL, so known ones go literally."""
    secrets = {inline_password(storage), os.environ.get(PASSWORD_VARIABLE)} - {None, ""}
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return URL_PASSWORD.sub(rf"\1:{MASK}@", text)


def saved_storage(storage: str | None) -> str | None:
    """`hpo.storage` as sweep.yaml records it: an inline password masked (the workers get it from
    their environment, see `storage_environment`)."""
    return storage if storage in FILE_STORAGES else mask_secrets(storage)


def storage_environment(storage: str | None) -> dict[str, str]:
    """Environment variables a worker needs to open the storage: an inline password travels here,
    not on its command line (visible to every user) nor in sweep.yaml."""
    password = inline_password(storage)
    return {PASSWORD_VARIABLE: password} if password is not None else {}


def parse_storage_url(storage: str):
    """The SQLAlchemy URL of an RDB storage, its password from $MMRL_STORAGE_PASSWORD when the URL
    has none or a masked one; ConfigError (password masked) when it cannot be one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = mask_secrets(storage)
    if "://" not in storage:
        raise ConfigError(f"hpo.storage: expected null, sqlite, journal or an RDB URL such as "
                          f"postgresql://user@host/db, got {shown!r}")
    try:
        url = make_url(storage)
    except (ArgumentError, ValueError) as e:
        raise ConfigError(f"hpo.storage: {shown} is not a database URL ({mask_secrets(str(e), storage)}); expected "
                          f"dialect[+driver]://user@host[:port]/database, e.g. postgresql://user@host/db") from None
    try:
        url.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"hpo.storage: unknown database {url.drivername!r} in {shown}; expected sqlite:///path, "
                          f"postgresql://..., mysql+pymysql://... or another SQLAlchemy dialect") from None
    if url.password in (None, MASK) and os.environ.get(PASSWORD_VARIABLE):
        url = url.set(password=os.environ[PASSWORD_VARIABLE])
    elif url.password == MASK:
        raise ConfigError(f"hpo.storage: the password of {shown} is not saved anywhere; set {PASSWORD_VARIABLE}")
    return url


def storage_for(hpo: HpoConfig, sweep_dir: Path):
    """The Optuna storage `hpo.storage` names (files inside `sweep_dir`)."""
    if hpo.storage in (None, "sqlite"):
        url = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
        # Several local workers share one SQLite file: wait for its lock rather than fail.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    if hpo.storage == "journal":
        backend = optuna.storages.journal.JournalFileBackend(str(sweep_dir / "journal.log"))
        return optuna.storages.JournalStorage(backend)
    url = parse_storage_url(hpo.storage)
    return optuna.storages.RDBStorage(url.render_as_string(hide_password=False))


def check_storage(hpo: HpoConfig, sweep_dir: Path) -> None:
    """`hpo.storage` can be used, checked before anything is created: a URL that parses, its
    driver importable, an SQLite file that can be written, a server that answers within
    STORAGE_TIMEOUT_SECONDS. Every problem is one ConfigError naming hpo.storage, password masked."""
    if hpo.storage in FILE_STORAGES:  # a file in the sweep directory (checked as sweep_dir/runs_root)
        name = "journal.log" if hpo.storage == "journal" else "study.db"
        path = sweep_dir / name
        if path.exists() and name == "study.db":  # a resumed sweep's study
            check_sqlite_file(path)
        elif path.exists() and not path.is_file():
            raise ConfigError(f"hpo.storage: {short_path(path)} exists and is not a file")
        return
    url = parse_storage_url(hpo.storage)
    shown = mask_secrets(hpo.storage)
    check_driver(url, shown)
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
            raise ConfigError(f"hpo.storage: {shown} is an in-memory database, which worker processes cannot share; "
                              f"expected a file (sqlite:///path/to/study.db) or null")
        check_sqlite_file(Path(url.database))
        return
    check_server(url, shown)


def check_driver(url, shown: str) -> None:
    """The URL's database driver can be imported."""
    try:
        url.get_dialect().import_dbapi()
    except ImportError as e:
        module = e.name or url.get_driver_name()
        top = module.split(".")[0]
        raise ConfigError(f"hpo.storage: {shown} needs the database driver {top!r}, which is not installed "
                          f"(pip install {DRIVER_PACKAGES.get(top, top)})") from None


def check_sqlite_file(path: Path) -> None:
    """An SQLite study file is an SQLite database that can be written, or can be created."""
    try:
        if path.exists():
            check_existing_sqlite(path)
        else:
            check_new_sqlite(path)
    except OSError as e:  # e.g. a name too long for the filesystem (ENAMETOOLONG)
        raise ConfigError(f"hpo.storage: the SQLite file {short_path(path)} cannot be used ({e.strerror})") from None


def check_existing_sqlite(path: Path) -> None:
    """An existing study file: a writable SQLite database (or an empty file)."""
    if not path.is_file():
        raise ConfigError(f"hpo.storage: {short_path(path)} exists and is not a file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"hpo.storage: {short_path(path)} is not writable")
    with path.open("rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header and header != SQLITE_HEADER:
        raise ConfigError(f"hpo.storage: {short_path(path)} is not an SQLite database")


def check_new_sqlite(path: Path) -> None:
    """A study file to create: SQLite makes the file, not its directory, which must be writable."""
    from ..preflight import check_output_dir

    directory = path.parent
    if not directory.is_dir():
        raise ConfigError(f"hpo.storage: the SQLite file {short_path(path)} needs an existing directory "
                          f"{short_path(directory)}")
    try:
        check_output_dir("hpo.storage", directory)
    except ConfigError as e:  # say which file the directory was checked for
        detail = str(e).removeprefix("hpo.storage: ")
        raise ConfigError(f"hpo.storage: the SQLite file {short_path(path)} cannot be created: {detail}") from None


def check_server(url, shown: str) -> None:
    """The database server answers within STORAGE_TIMEOUT_SECONDS and lets us in."""
    port = url.port or DEFAULT_PORTS.get(url.get_backend_name())
    if url.host and port:  # no host: a local socket, which the connection below tries
        try:
            socket.create_connection((url.host, port), timeout=STORAGE_TIMEOUT_SECONDS).close()
        except socket.gaierror:
            raise ConfigError(f"hpo.storage: cannot resolve the host {url.host!r} of {shown}") from None
        except OSError as e:
            reason = e.strerror or "timed out"
            raise ConfigError(f"hpo.storage: cannot reach {url.host}:{port} of {shown} within "
                              f"{STORAGE_TIMEOUT_SECONDS:g} s ({reason})") from None
    connect(url, shown)


def connect(url, shown: str) -> None:
    """Open and close one connection (credentials, database name), waiting at most the timeout."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    argument = TIMEOUT_ARGUMENTS.get(url.get_driver_name())
    connect_args = {argument: int(STORAGE_TIMEOUT_SECONDS)} if argument else {}
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    except Exception as e:  # any driver's error: its first line is the reason
        cause = getattr(e, "orig", None) or e
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        reason = mask_secrets(lines[0]).replace(url.password, MASK) if url.password else mask_secrets(lines[0])
        raise ConfigError(f"hpo.storage: cannot connect to {shown}: {reason}") from None
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- sampler
def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial `number`: a hash of (hpo.sampler.seed, trial number), 32 bits."""
    digest = hashlib.sha256(f"mmrl-sweep:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler that draws each trial from its own stream, `make(trial_seed(seed, number))`.

    One seed per worker made every worker (and every re-run of the sweep) repeat the same
    random start-up trials; trial numbers are unique in a study, so per-trial seeds are distinct
    across workers, machines and re-runs, and still reproducible. The inner sampler is rebuilt
    for each trial: Optuna's samplers keep their history in the storage, not in the object.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.number: int | None = None
        self.inner = make(seed)

    def for_trial(self, number: int) -> optuna.samplers.BaseSampler:
        """The inner sampler seeded for trial `number` (built once per trial)."""
        if number != self.number:
            self.number, self.inner = number, self.make(trial_seed(self.seed, number))
        return self.inner

    def infer_relative_search_space(self, study, trial):
        """Optuna's hook, answered by the sampler seeded for this trial."""
        return self.for_trial(trial.number).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        """Optuna's hook, answered by the sampler seeded for this trial."""
        return self.for_trial(trial.number).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        """Optuna's hook, answered by the sampler seeded for this trial."""
        return self.for_trial(trial.number).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        """Optuna's hook, answered by the sampler seeded for this trial."""
        self.for_trial(trial.number).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        """Optuna's hook, answered by the sampler seeded for this trial. Telling another trial
        (a dead worker's) must not restart the stream of the trial being drawn here."""
        own = self.inner if trial.number == self.number else self.make(trial_seed(self.seed, trial.number))
        own.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Optuna's hook (its own threads): reseed the current inner sampler."""
        self.inner.reseed_rng()


def sampler_for(hpo: HpoConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler `hpo.sampler` names, seeded with `seed` (default: hpo.sampler.seed)."""
    config = hpo.sampler
    seed = config.seed if seed is None else seed
    if config.type == "tpe":  # Optuna 5: multivariate TPE with the constant liar for running trials
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials,
                                          multivariate=True, constant_liar=True)
    if config.type == "gp":  # Gaussian-process Bayesian optimisation (needs scipy)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=config.n_startup_trials)
    if config.type == "nsga2":  # evolutionary, for multi-objective studies
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


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
    sampler = TrialSeededSampler(lambda seed: sampler_for(hpo, seed), hpo.sampler.seed)
    return optuna.create_study(storage=storage_for(hpo, sweep_dir), study_name=hpo.study_name,
                               sampler=sampler, pruner=pruner_for(hpo), directions=hpo.directions,
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
