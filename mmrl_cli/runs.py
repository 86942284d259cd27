"""Find existing runs and their checkpoints, for `mmrl train resume=...` and `mmrl eval run=...`.

Everything a user points at is checked here before any work starts: the path is one the
filesystem can take, the directory exists and is an mmrl run, it holds an intact checkpoint, the
checkpoint's config is valid, the checkpoint's weights fit (and run in) the model that config
builds, and, to resume, its counters and RNG states are of the kinds and ranges the trainer reads
and no other process is training in the run. Problems become one-line ConfigErrors.

A run directory is locked while a process trains in it (`RunLock`: ``fcntl.flock`` on
``<run>/.lock``, which names the holder's pid and host); the kernel drops the lock when the
process ends, however it ends.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import math
import os
import random
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import (FORMAT, LATEST, CheckpointError, check_model_fits, file_metadata, find_checkpoint, load_state,
                         verify)
from .config import GROUP_SCHEMAS, ConfigError, TrainConfig, validate
from .text import tokenizer_for

CONF_DIR = Path(__file__).resolve().parent / "conf"
RUN_DIR_VARIABLE = "MMRL_RUN_DIR"  # set for the ranks of `mmrl train`'s launcher (it holds the lock)
LOCK_FILE = ".lock"
STEPS_MAX = 2**63 - 1


@dataclass
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


@dataclass
class RunCheckpoint:
    """A run directory, the checkpoint chosen in it, and the config to continue or evaluate with."""

    run_dir: Path
    checkpoint_dir: Path
    config: DictConfig
    typed: TrainConfig
    notes: list[str]


def newest_run(runs_root: Path) -> Path | None:
    """The run under `runs_root` whose latest checkpoint was written most recently."""
    pointers = list(runs_root.glob(f"**/checkpoints/{LATEST}")) if runs_root.is_dir() else []
    newest = max(pointers, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent.parent if newest else None


def resolve_run(value: str, runs_root: str, key: str) -> tuple[Path, str]:
    """The run directory `value` names and the checkpoint it implies (`latest` unless it is one).

    `value` is a run directory, a checkpoint directory inside one, or ``latest`` (the newest
    run under `runs_root`).
    """
    from .preflight import check_path

    if value == LATEST:
        check_path("runs_root", runs_root)
        run = newest_run(Path(runs_root))
        if run is None:
            raise ConfigError(f"{key}=latest: no run with a checkpoint under {runs_root}/")
        return run.resolve(), LATEST
    check_path(key, value)  # too long a path fails every file operation (ENAMETOOLONG)
    path = Path(value).expanduser()
    try:
        if not path.exists():
            raise ConfigError(f"{key}: {value} does not exist")
        if not path.is_dir():
            raise ConfigError(f"{key}: {value} is not a directory (expected an mmrl run directory)")
        path = path.resolve()
    except OSError as e:  # a loop of symbolic links, no permission to look, ...
        raise ConfigError(f"{key}: {value} cannot be opened ({e.strerror})") from None
    if path.parent.name == "checkpoints" and (path / "meta.json").exists():
        return path.parent.parent, path.name
    if not (path / "config.yaml").is_file() and not (path / "checkpoints").is_dir():
        raise ConfigError(f"{key}: {value} is not an mmrl run directory (no config.yaml or checkpoints/)")
    return path, LATEST


def apply_overrides(cfg: DictConfig, overrides: list[str], ignore: tuple[str, ...]) -> None:
    """Apply `key=value` command-line overrides to a saved config (no group switches)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(f"malformed override: {str(e).splitlines()[0]}") from None
    for override in parsed:
        key = override.key_or_group
        if key in ignore or key.startswith("hydra"):
            continue
        if key == "hardware":  # moving a run to other hardware is fine: swap the whole group
            option = CONF_DIR / "hardware" / f"{override.value()}.yaml"
            if not option.is_file():
                raise ConfigError(f"hardware={override.value()}: unknown option")
            cfg.hardware = OmegaConf.load(option)
            continue
        if key in GROUP_SCHEMAS or key == "exp":
            raise ConfigError(f"{key}: a resumed run keeps its config groups; override single keys ({key}.<key>=...) instead")
        if override.is_sweep_override() or override.is_delete():
            raise ConfigError(f"{key}: sweeps and deletions cannot be applied to a resumed run")
        OmegaConf.update(cfg, key, override.value(), force_add=True)


def migrate_format1_config(config: DictConfig) -> bool:
    """Turn an mmrl 0.1 (checkpoint format 1) config into today's layout, in place; True if it was one.

    0.1 kept the loop settings in `algo` and wrote PPO's value loss as 0.5 * MSE (today: the MSE,
    so the same loss has half the `vf_coef`).
    """
    algo = config.get("algo")
    if not isinstance(algo, DictConfig) or "total_steps" not in algo:
        return False
    config.total_steps = algo.pop("total_steps")
    config.rollout = {key: algo.pop(key) for key in ("n_envs", "n_steps", "bootstrap_truncated") if key in algo}
    if "vf_coef" in algo:
        algo.vf_coef = algo.vf_coef / 2
    return True


def check_state_compatible(saved: dict, wanted: dict, key: str) -> None:
    """ConfigError if overrides change what the checkpoint's env state was built for.

    The env's tensors hold `rollout.n_envs` copies of a `data` layout: neither can change on resume.
    """
    if saved.get("data") != wanted.get("data"):
        changed = sorted(k for k in set(saved["data"]) | set(wanted["data"]) if saved["data"].get(k) != wanted["data"].get(k))
        raise ConfigError(f"data.{changed[0]}: cannot change when resuming (the checkpoint holds the env state it was "
                          f"trained with; start a new run instead)")
    if saved.get("rollout", {}).get("n_envs") != wanted.get("rollout", {}).get("n_envs"):
        raise ConfigError(f"rollout.n_envs: cannot change when resuming (the checkpoint holds the state of "
                          f"{saved['rollout']['n_envs']} envs)")


def load_run_checkpoint(value: str, runs_root: str, checkpoint: str, key: str, overrides: list[str] = (),
                        ignore: tuple[str, ...] = ()) -> RunCheckpoint:
    """Resolve `value` to a run and an intact checkpoint; load and check its config and weights."""
    from .builders import policy_for_weights

    run_dir, implied = resolve_run(value, runs_root, key)
    if key == "resume":  # before reading anything another process may be rewriting
        check_unlocked(run_dir, key)
    try:
        checkpoint_dir, notes = find_checkpoint(run_dir, checkpoint if checkpoint != LATEST else implied)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}") from None
    try:
        config = OmegaConf.load(checkpoint_dir / "config.yaml")
    except Exception as e:
        raise ConfigError(f"{key}: {checkpoint_dir}/config.yaml is not a valid config ({str(e).splitlines()[0]})") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{key}: {checkpoint_dir}/config.yaml is not a mapping")
    if verify(checkpoint_dir)["format"] != FORMAT:
        if key == "resume":
            raise ConfigError(f"resume: {checkpoint_dir} is a checkpoint of mmrl 0.1 (format 1), which this version "
                              f"cannot continue; evaluate it with `mmrl eval run=...` or start a new run")
        if migrate_format1_config(config):
            notes.append(f"{checkpoint_dir} is an mmrl 0.1 checkpoint: its config was migrated to today's layout")
    if config.get("data", {}).get("type") == "gym" and "constant_mission" not in config.data:
        config.data.constant_mission = "keep"  # runs from before the key existed fed every mission
    saved = OmegaConf.to_container(config)
    apply_overrides(config, list(overrides), ignore)
    check_state_compatible(saved, OmegaConf.to_container(config), key)
    typed = validate(config)
    try:
        policy = policy_for_weights(typed, checkpoint_dir / "model.safetensors", torch.device("cpu"))
        check_model_fits(checkpoint_dir / "model.safetensors", policy)
        check_structure_runs(typed, checkpoint_dir / "model.safetensors", policy)
        if key == "resume":
            checked_state(checkpoint_dir)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}") from None
    return RunCheckpoint(run_dir, checkpoint_dir, config, typed, notes)


# ------------------------------------------------------------------ the saved training state
def check_structure_runs(cfg: TrainConfig, weights: Path, policy: torch.nn.Module) -> None:
    """CheckpointError unless a policy reshaped like a structurally compressed weights file still
    computes: the shapes in such a file are taken as they are, so a file whose shapes do not chain
    (say, a bias longer than its layer) is refused here rather than failing in the first step."""
    from .checkpoint import STRUCTURE_KEY

    if not file_metadata(weights).get(STRUCTURE_KEY):
        return  # exactly the config's shapes (check_model_fits): the model computes
    from .envs.spec import observation_spec_of

    spec, _ = observation_spec_of(cfg.data, tokenizer_for(cfg.model))
    try:
        with torch.no_grad():
            policy({name: torch.zeros((1, *shape), dtype=dtype) for name, (shape, dtype) in spec.items()})
    except (RuntimeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{weights}: its tensor shapes do not make a working {type(policy).__name__} "
                              f"({str(e).splitlines()[0]})") from None


def checked_state(checkpoint_dir: Path) -> dict:
    """The training state of a verified checkpoint, with what the trainer reads from it before
    anything else checked (`check_training_state`); CheckpointError otherwise."""
    meta = verify(checkpoint_dir)
    state = load_state(checkpoint_dir)
    check_training_state(state, meta["update"], f"{checkpoint_dir}/meta.json")
    return state


def check_training_state(state: dict, update: int, where: str) -> None:
    """CheckpointError unless the parts of a training state that need no live object to check are
    what the trainer reads: the progress counters (integers >= 0, finite times, the update of the
    checkpoint), the global RNG states (each restored into a scratch generator first), the device
    type and rank count. The algorithm's and the env's state are checked against the live objects
    when they are restored (`checkpoint.state_mismatch`)."""
    for part in ("algo", "collector", "progress", "rng"):
        if part not in state:
            raise CheckpointError(f"{where}: the training state has no {part}")
    problem = (progress_problem(state["progress"], update) or rng_problem(state["rng"])
               or (None if isinstance(state.get("device_type", "cpu"), str) else "device_type is not a string")
               or (None if type(state.get("world_size", 1)) is int and state.get("world_size", 1) >= 1
                   else "world_size is not a positive integer"))
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def progress_problem(progress, update: int) -> str | None:
    """What is wrong with saved progress counters (`Progress` as a mapping), or None."""

    if not isinstance(progress, dict):
        return "progress is not a mapping"
    for field in dataclasses.fields(Progress):
        if field.name not in progress:
            continue  # older checkpoints lack newer counters: they keep their defaults
        value, kind = progress[field.name], type(getattr(Progress(), field.name))
        if kind is int and (type(value) is not int or not 0 <= value <= STEPS_MAX):
            return f"progress.{field.name} is {value!r}, expected an integer in [0, {STEPS_MAX}]"
        if kind is float and (type(value) not in (int, float) or not math.isfinite(value) or value < 0):
            return f"progress.{field.name} is {value!r}, expected a finite number >= 0"
        if kind in (list, dict) and not isinstance(value, kind):
            return f"progress.{field.name} is {type(value).__name__}, expected a {kind.__name__}"
    if not all(isinstance(e, dict) and isinstance(e.get("validation"), dict) for e in progress.get("evaluations", [])):
        return "progress.evaluations is not a list of evaluation results"
    if progress.get("update", update) != update:
        return f"progress.update is {progress['update']}, but this is the checkpoint of update {update}"
    return None


def rng_problem(rng) -> str | None:
    """What is wrong with saved global RNG states (`rng.global_rng_state`), or None: each is
    restored into a scratch generator of its kind, which checks it exactly as the real restore will."""
    try:
        version, internal, gauss = rng["python"]
        random.Random().setstate((version, tuple(internal), gauss))
        numpy = rng["numpy"]
        if numpy["name"] != "MT19937" or type(numpy["pos"]) is not int or not 0 <= numpy["pos"] <= 624:
            return "rng.numpy is not an MT19937 state"
        key = np.array(numpy["key"], dtype=np.int64)
        if key.shape != (624,) or key.min() < 0 or key.max() >= 2**32:
            return "rng.numpy.key is not 624 32-bit words"
        np.random.RandomState().set_state((numpy["name"], key.astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                                           numpy["gauss"]))
        torch.Generator().set_state(rng["torch"])
        if not isinstance(rng["cuda"], list) or not all(
                isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 for t in rng["cuda"]):
            return "rng.cuda is not a list of generator states"
    except (TypeError, ValueError, KeyError, RuntimeError, OverflowError) as e:
        return f"the saved global RNG states are not valid ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return None


# ---------------------------------------------------------------------------- the run lock
class RunLocked(ConfigError):
    """Another process is training in the run directory (one line naming it)."""


# This process's lock holders by lock file: a train() that raised keeps its lock for as long as
# its traceback lives (a test, a notebook), and the same process may then take it over.
_HELD: "weakref.WeakValueDictionary[str, RunLock]" = weakref.WeakValueDictionary()


class RunLock:
    """An exclusive lock on a run directory while this process trains in it: ``fcntl.flock`` on
    ``<run>/.lock``, a file that names the holder (pid, host, start time) for whoever finds it
    taken. The kernel releases it when the process ends, however it ends (kill -9 included), so a
    stale file never blocks anyone; the file itself stays.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> "RunLock":
        """Take the lock (RunLocked if another process holds it) and write who holds it."""
        stale = _HELD.get(str(self.path.resolve()))
        if stale is not None:
            stale.release()
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise RunLocked(locked_message(self.path.parent)) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        file.flush()
        self.file = file
        _HELD[str(self.path.resolve())] = self
        return self

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(run_dir: Path) -> str | None:
    """Who holds the lock of `run_dir` ("pid N on host since ..."), or None when nobody does.

    Probes with a shared lock on the existing lock file, which creates and changes nothing. A lock
    this process holds counts as free: this process may take it over (see `_HELD`)."""
    path = Path(run_dir) / LOCK_FILE
    own = _HELD.get(str(path.resolve()))
    if own is not None and own.file is not None:
        return None
    try:
        file = open(path)
    except OSError:
        return None  # no lock file: nobody has trained here since locks exist
    with file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return file.read().strip() or "another process"
        fcntl.flock(file, fcntl.LOCK_UN)
    return None


def locked_message(run_dir: Path) -> str:
    """The one line for a run that another process trains in."""
    return (f"{run_dir} is in use by another mmrl process ({holder(run_dir) or 'another process'}); wait for it to "
            f"end or stop it (Ctrl-C or SIGTERM saves a checkpoint) before resuming")


def check_unlocked(run_dir: Path, key: str) -> None:
    """RunLocked naming the holder if another process trains in `run_dir` now. Ranks do not ask:
    under `mmrl train`'s launcher it holds the lock for them, under a torchrun started by hand
    rank 0 takes it (and the other ranks would find it taken)."""
    if RUN_DIR_VARIABLE in os.environ or os.environ.get("RANK", "0") != "0":
        return
    if holder(run_dir) is not None:
        raise RunLocked(f"{key}: {locked_message(run_dir)}")


def lock_run(run_dir: Path, is_main: bool = True) -> RunLock | None:
    """The lock a training process takes on its run directory, or None where another process
    holds it for this one: ranks started by `mmrl train`'s torchrun launcher (the launcher holds
    it) and ranks other than 0 (under a torchrun started by hand, rank 0 holds it; an elastic
    restart's new rank 0 takes it again, the old one's died with it)."""
    if RUN_DIR_VARIABLE in os.environ or not is_main:
        return None
    return RunLock(run_dir).acquire()


# ------------------------------------------------------------------ new and resumed runs
def new_run_dir(cfg: TrainConfig) -> Path:
    """Create <runs_root>/<date>/<time>[-<run_name>] (with .1, .2, ... if taken)."""
    now = dt.datetime.now()
    base = Path(cfg.runs_root) / now.strftime("%Y-%m-%d") / (now.strftime("%H-%M-%S") + (f"-{cfg.run_name}" if cfg.run_name else ""))
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base if n == 0 else base.with_name(f"{base.name}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory next to {base}")


def resumed_run(resume: str, runs_root: str, overrides: list[str]):
    """The run and checkpoint `resume=` names, with its saved config plus the other overrides."""
    from .runs import load_run_checkpoint

    return load_run_checkpoint(resume, runs_root, "latest", "resume", overrides, ignore=("resume", "runs_root"))
