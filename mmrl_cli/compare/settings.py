"""The config of `mmrl compare` (`conf/compare.yaml`), typed and checked; every problem is one
ConfigError line naming the key."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import MISSING, DictConfig

from ..config import SEED_MAX, ConfigError, _merge, between, one_of, plain_config

METRICS = ("auto", "success", "return")
SCORES = ("heldout", "validation")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # each directory name of `out` below runs_root
MAX_REPS = 100_000


@dataclass
class CompareConfig:
    """`mmrl compare`'s whole config."""

    runs: list[str] = MISSING  # run directories, globs, or directories with runs below them
    by: list[str] = field(default_factory=lambda: ["algo.type"])
    metric: str = "auto"
    target: Optional[float] = None
    score: str = "heldout"
    reps: int = 2000
    seed: int = 0
    runs_root: str = "runs"
    out: Optional[str] = None

    def __post_init__(self) -> None:
        self.stamp = time.strftime("%Y-%m-%d_%H-%M-%S")  # names the default output directory

    @property
    def directory(self) -> Path:
        """Where the report goes: `out`, else <runs_root>/compare/<date_time>."""
        return Path(self.out) if self.out else Path(self.runs_root) / "compare" / self.stamp

    def check(self) -> None:
        """Validate every key; ConfigError (one line naming the key) on the first problem."""
        if not self.runs or any(not str(r).strip() for r in self.runs):
            raise ConfigError("runs: expected run directories or globs, e.g. runs='runs/2026-12-05/*' or runs=[a,b]")
        if not self.by or any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", k) for k in self.by):
            raise ConfigError(f"by: expected config keys such as algo.type or [algo.type,model.type], got {self.by}")
        one_of("", self, "metric", METRICS)
        one_of("", self, "score", SCORES)
        if self.target is not None and not math.isfinite(self.target):
            raise ConfigError(f"target: expected a finite number or null, got {self.target}")
        if self.target is not None and self.metric == "success" and not 0 <= self.target <= 1:
            raise ConfigError(f"target: a success rate lies in [0, 1], got {self.target}")
        between("", self, "reps", 100, MAX_REPS)
        between("", self, "seed", 0, SEED_MAX)
        self.check_out()

    def check_out(self) -> None:
        """The output directory lies inside runs_root, and its names are plain."""
        root = Path(self.runs_root).expanduser().resolve()
        target = self.directory.expanduser().resolve()
        try:
            inside = target.relative_to(root)
        except ValueError:
            raise ConfigError(f"out: expected a directory inside runs_root ({self.runs_root}), got {str(self.directory)!r}") from None
        if not inside.parts:
            raise ConfigError(f"out: expected a directory inside runs_root ({self.runs_root}), not runs_root itself")
        bad = next((part for part in inside.parts if not NAME.match(part)), None)
        if bad is not None:
            raise ConfigError(f"out: directory names may hold letters, digits, '-', '_' and '.' only, got {bad!r}")


def validate_compare(cfg: DictConfig | dict) -> CompareConfig:
    """Check a composed `mmrl compare` config; return it typed (a single run or key becomes a list)."""
    raw = plain_config(cfg)
    for key in ("runs", "by"):
        if isinstance(raw.get(key), (str, int, float)) and raw.get(key) != "???":
            raw[key] = [str(raw[key])]
    typed: CompareConfig = _merge(CompareConfig, raw, "")
    typed.check()
    return typed
