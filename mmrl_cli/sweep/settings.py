"""The config of `mmrl sweep` (`conf/sweep.yaml` + the `hpo` group), typed and checked.

A search space is a nested mapping of config keys; a leaf is a distribution, e.g.
``algo: {lr: {type: float, low: 1e-4, high: 3e-3, log: true}}`` searches `algo.lr`, and a
leaf at a config group's name (``model: {type: categorical, choices: [mlp, cnn]}``) picks among
that group's options. `parse_space` turns the mapping into `Param`s; every problem is one
ConfigError line naming the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from ..config import SEED_MAX, ConfigError, _merge, between, one_of, positive, plain_config

DISTRIBUTIONS = ("float", "int", "categorical")
METRICS = ("validation_success", "validation_return")  # maximised, read from the trainer's validation evaluations
SECOND_OBJECTIVES = ("wall_seconds", "parameters")       # minimised
AGGREGATES = ("worst", "mean", "median")                 # how a trial's seeds make one objective value
SAMPLERS = ("tpe", "gp", "random", "nsga2")
PRUNERS = ("none", "median", "sha", "hyperband")
CONFIG_GROUPS = ("algo", "model", "data", "hardware", "compression", "exp")  # keys that pick a group option
STUDY_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
# The study name names a directory and the file `exp/<name>-best.yaml` (and its temporary twin):
# 200 characters stay inside the 255 bytes a file name may have on common filesystems.
STUDY_NAME_MAX = 200
NAME_MAX = 255  # bytes in one path component (Linux, macOS; ENAMETOOLONG beyond)
# Bytes of a whole path (Linux PATH_MAX, 4096), less room for what a sweep writes below its
# directory (retrain/rank<k>-trial<n>/seed<s>/checkpoints/<n>/model.safetensors and the like).
SWEEP_DIR_MAX = 4096 - 512


@dataclass
class ObjectiveConfig:
    metric: str = "validation_success"
    second: Optional[str] = None
    seeds: int = 1
    aggregate: str = "worst"

    def check(self) -> None:
        one_of("hpo.objective", self, "metric", METRICS)
        between("hpo.objective", self, "seeds", 1, 100)
        one_of("hpo.objective", self, "aggregate", AGGREGATES)
        if self.second is not None:
            one_of("hpo.objective", self, "second", SECOND_OBJECTIVES)


@dataclass
class SamplerConfig:
    type: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 10

    def check(self) -> None:
        one_of("hpo.sampler", self, "type", SAMPLERS)
        between("hpo.sampler", self, "seed", 0, SEED_MAX)
        between("hpo.sampler", self, "n_startup_trials", 0, 10**6)


@dataclass
class PrunerConfig:
    type: str = "median"
    n_startup_trials: int = 5
    warmup_steps: int = 0
    min_resource: Optional[int] = None
    reduction_factor: int = 3

    def check(self) -> None:
        one_of("hpo.pruner", self, "type", PRUNERS)
        between("hpo.pruner", self, "n_startup_trials", 0, 10**6)
        between("hpo.pruner", self, "warmup_steps", 0, 2**62)
        between("hpo.pruner", self, "reduction_factor", 2, 100)
        if self.min_resource is not None:
            between("hpo.pruner", self, "min_resource", 1, 2**62)


@dataclass
class BudgetConfig:
    trials: int = 30
    total_steps: Optional[int] = None
    wall_seconds: Optional[float] = None

    def check(self) -> None:
        between("hpo.budget", self, "trials", 1, 10**6)
        if self.total_steps is not None:
            between("hpo.budget", self, "total_steps", 1, 2**62)
        if self.wall_seconds is not None:
            positive("hpo.budget", self, "wall_seconds")


@dataclass
class RetrainConfig:
    top_k: int = 3
    seeds: int = 3
    first_seed: int = 10_000

    def check(self) -> None:
        between("hpo.retrain", self, "top_k", 0, 1000)
        between("hpo.retrain", self, "seeds", 1, 1000)
        between("hpo.retrain", self, "first_seed", 0, SEED_MAX - 1000)


@dataclass
class HpoConfig:
    study_name: str = MISSING
    train: list = field(default_factory=list)
    space: dict = field(default_factory=dict)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    storage: Optional[str] = None
    n_workers: int = 1
    first_seed: int = 1
    heartbeat_seconds: float = 10.0
    grace_seconds: float = 120.0
    max_retries: int = 1
    html: bool = False

    @property
    def directions(self) -> list[str]:
        """Optuna's directions: the metric is maximised, a second objective minimised."""
        return ["maximize"] + (["minimize"] if self.objective.second else [])

    def check(self) -> None:
        if len(self.study_name) > STUDY_NAME_MAX:  # before the name is quoted in any message
            raise ConfigError(f"hpo.study_name: expected at most {STUDY_NAME_MAX} characters (it names a directory "
                              f"and a file), got {len(self.study_name):,} (ENAMETOOLONG)")
        if not self.study_name or not set(self.study_name) <= STUDY_NAME_CHARS or self.study_name[0] in "-.":
            raise ConfigError(f"hpo.study_name: expected letters, digits, '-', '_' or '.', got {self.study_name!r}")
        for section in (self.objective, self.sampler, self.pruner, self.budget, self.retrain):
            section.check()
        between("hpo", self, "n_workers", 1, 256)
        between("hpo", self, "first_seed", 0, SEED_MAX - 10**6)
        between("hpo", self, "max_retries", 0, 100)
        positive("hpo", self, "heartbeat_seconds", "grace_seconds")
        if self.grace_seconds <= 2 * self.heartbeat_seconds:
            raise ConfigError(f"hpo.grace_seconds: expected more than 2 * hpo.heartbeat_seconds = "
                              f"{2 * self.heartbeat_seconds:g}, got {self.grace_seconds:g}")
        if not all(isinstance(item, str) for item in self.train):
            raise ConfigError(f"hpo.train: expected a list of `mmrl train` overrides (strings), got {self.train!r}")
        if self.objective.second and self.pruner.type != "none":
            raise ConfigError("hpo.pruner.type: Optuna cannot prune multi-objective studies "
                              f"(hpo.objective.second={self.objective.second}); use hpo.pruner.type=none")
        parse_space(self.space)


@dataclass
class SweepConfig:
    """`mmrl sweep`'s whole config."""

    hpo: Any = None  # an HpoConfig, merged on its own (validate_sweep)
    runs_root: str = "runs"
    sweep_dir: Optional[str] = None

    def check(self) -> None:
        self.hpo.check()
        check_path_length("sweep_dir" if self.sweep_dir else "runs_root", self.directory)

    @property
    def directory(self) -> str:
        """Where the study, its trials and its report live."""
        return self.sweep_dir or f"{self.runs_root}/sweeps/{self.hpo.study_name}"


def short_path(path: Any) -> str:
    """A path for a one-line message: a very long one keeps its start and its end."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:60]}...{text[-40:]} ({len(text):,} characters)"


def check_path_length(key: str, path: str) -> None:
    """`path` (the sweep directory) fits the filesystem's limits on names and paths, with room for
    what the sweep writes below it; otherwise one ConfigError (ENAMETOOLONG) naming `key`."""
    too_long = next((part for part in Path(path).parts if len(part.encode()) > NAME_MAX), None)
    if too_long is not None:
        raise ConfigError(f"{key}: the directory name {short_path(too_long)} is longer than the {NAME_MAX} bytes "
                          f"a file name may have (ENAMETOOLONG)")
    length = len(os.path.abspath(path).encode())
    if length > SWEEP_DIR_MAX:
        raise ConfigError(f"{key}: the sweep directory {short_path(path)} is a path of {length:,} bytes; expected at "
                          f"most {SWEEP_DIR_MAX:,}, to leave room for the runs it holds (ENAMETOOLONG)")


def validate_sweep(cfg: DictConfig | dict) -> SweepConfig:
    """Check a composed `mmrl sweep` config; return it typed (ConfigError naming the key)."""
    raw = plain_config(cfg)
    hpo = raw.pop("hpo", None)
    if hpo is None:
        raise ConfigError("hpo: required (pick a preset, e.g. hpo=cartpole-ppo)")
    typed: SweepConfig = _merge(SweepConfig, raw, "")
    typed.hpo = _merge(HpoConfig, hpo, "hpo.")
    typed.check()
    return typed


# ----------------------------------------------------------------------------- space
@dataclass
class Param:
    """One searched key: its Optuna distribution's arguments, and how a value becomes an override."""

    key: str  # dotted config key, or a group name (`model`) for a group choice
    kind: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list = field(default_factory=list)

    def suggest(self, trial) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, self.choices)

    def override(self, value: Any) -> str:
        """The `mmrl train` override that sets this parameter to `value`."""
        return f"{self.key}={format_value(value)}"

    def extremes(self) -> list:
        """Values that bound what the trials may use (checked before the sweep starts)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _leaves(space: Any, prefix: str):
    if not isinstance(space, dict):
        raise ConfigError(f"hpo.space{'.' + prefix if prefix else ''}: expected a mapping of config keys to "
                          f"distributions, got {space!r}")
    for name, value in space.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, dict) and isinstance(value.get("type"), dict):  # searching e.g. algo.type
            raise ConfigError(f"hpo.space.{key}.type: pick a {key} option with a categorical `{key}` entry instead")
        if isinstance(value, dict) and "type" in value:  # a distribution (no config section is named `type`)
            if value["type"] not in DISTRIBUTIONS:
                raise ConfigError(f"hpo.space.{key}.type: expected one of {', '.join(DISTRIBUTIONS)}, got {value['type']!r}")
            yield key, value
        else:
            yield from _leaves(value, key)


FIELDS = {  # the fields each kind of distribution takes
    "float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
                "categorical": ("type", "choices")}


def _number(key: str, name: str, value: Any, integer: bool) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value):
        raise ConfigError(f"hpo.space.{key}.{name}: expected a finite {'integer' if integer else 'number'}, got {value!r}")
    return value


def parse_space(space: dict) -> list[Param]:
    """The searched parameters of an `hpo.space` mapping; ConfigError on any bad entry."""
    params = []
    for key, spec in _leaves(space, ""):
        kind = spec["type"]
        unknown = set(spec) - set(FIELDS.get(kind, ()))
        if unknown:
            raise ConfigError(f"hpo.space.{key}.{sorted(unknown)[0]}: unknown field for a {kind} distribution "
                              f"(expected: {', '.join(FIELDS[kind][1:])})")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"hpo.space.{key}.choices: expected a non-empty list, got {choices!r}")
            if len(set(map(format_value, choices))) != len(choices):
                raise ConfigError(f"hpo.space.{key}.choices: expected distinct values, got {choices!r}")
            for choice in choices:
                if isinstance(choice, float) and not math.isfinite(choice):
                    raise ConfigError(f"hpo.space.{key}.choices: expected finite values, got {choice!r}")
                if isinstance(choice, (dict, list)):
                    raise ConfigError(f"hpo.space.{key}.choices: expected scalar values (numbers, strings, true/false, "
                                      f"null), got {choice!r}")
            params.append(Param(key, kind, choices=list(choices)))
            continue
        if key in CONFIG_GROUPS:
            raise ConfigError(f"hpo.space.{key}: a config group is searched with a categorical distribution of its options")
        for name in ("low", "high"):
            if name not in spec:
                raise ConfigError(f"hpo.space.{key}.{name}: required for a {kind} distribution")
        integer = kind == "int"
        low, high = _number(key, "low", spec["low"], integer), _number(key, "high", spec["high"], integer)
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"hpo.space.{key}.log: expected true or false, got {log!r}")
        step = spec.get("step")
        if step is not None:
            step = _number(key, "step", step, integer)
            if step <= 0:
                raise ConfigError(f"hpo.space.{key}.step: expected a value > 0, got {step}")
            if log:
                raise ConfigError(f"hpo.space.{key}.step: Optuna cannot combine a step with log=true; drop one")
        if not low < high:
            raise ConfigError(f"hpo.space.{key}: expected low < high, got low={low}, high={high}")
        if log and low <= 0:
            raise ConfigError(f"hpo.space.{key}.low: a log-scale distribution needs low > 0, got {low}")
        if step is not None and step > high - low:
            raise ConfigError(f"hpo.space.{key}.step: expected at most high - low = {high - low}, got {step}")
        params.append(Param(key, kind, low=low, high=high, log=log, step=step))
    if not params:
        raise ConfigError("hpo.space: expected at least one searched key (e.g. hpo.space.algo.lr: {type: float, low: 1e-4, high: 1e-2, log: true})")
    return params
