"""The config of `mmrl demos` (`conf/demos.yaml` + the `data` group), typed and checked; every
problem is one ConfigError line naming the key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from ..config import SEED_MAX, SPLITS, ConfigError, _merge, between, merge_group, one_of, plain_config

MAX_EPISODES = 10_000_000
MAX_SHARD_EPISODES = 100_000
EXPERT_DATA = ("goto", "gym")  # data types with an expert: goto's planner; BabyAI levels' bot
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # each directory name of `out` below runs_root
# Gymnasium envs play each split from its own seed range, this far apart (envs.SPLIT_SEED_OFFSETS).
GYM_SPLIT_SEEDS = 1_000_000
# goto's validation ids count up from 2^30 and held-out ids from 2^31 (envs/goto.py SPLIT_ID_BASE).
GOTO_VALIDATION_IDS = 1 << 30


@dataclass
class DemosConfig:
    """`mmrl demos`'s whole config."""

    data: Any = None  # a data group section, merged on its own (validate_demos)
    episodes: int = 20_000
    shard_episodes: int = 1000
    seed: int = 1
    split: str = "train"
    runs_root: str = "runs"
    out: Optional[str] = None
    progress: bool = True

    @property
    def data_name(self) -> str:
        """A short name of the env: the gymnasium id (unusual characters as '_'), else the data type."""
        name = self.data.env_id if self.data.type == "gym" else self.data.type
        return re.sub(r"[^A-Za-z0-9_.-]", "_", name)

    @property
    def directory(self) -> Path:
        """Where the dataset is written: `out`, else <runs_root>/demos/<data name>-<episodes>."""
        return Path(self.out) if self.out else Path(self.runs_root) / "demos" / f"{self.data_name}-{self.episodes}"

    def check(self) -> None:
        """Validate every key; ConfigError (one line naming the key) on the first problem."""
        between("", self, "episodes", 1, MAX_EPISODES)
        between("", self, "shard_episodes", 1, MAX_SHARD_EPISODES)
        between("", self, "seed", 0, SEED_MAX)
        one_of("", self, "split", SPLITS)
        if self.data.type not in EXPERT_DATA:
            raise ConfigError(f"data: no expert for data={self.data.type} (experts: the shortest-path planner of "
                              "data=goto, the BabyAI bot of data=gym with a BabyAI level id)")
        if getattr(self.data, "sequence_steps", None):
            raise ConfigError("data.sequence_steps: the planner demonstrates one-step goto levels; the sequential task "
                              "has no expert yet (use data=goto)")
        self.data.check()
        self.check_level_range()
        self.check_out()

    def check_level_range(self) -> None:
        """Episode k plays level (or seed) `seed + k` of the split: that must stay inside the split's range."""
        if self.data.type == "gym" and self.split != "heldout":
            limit, what = GYM_SPLIT_SEEDS, f"env seeds of the {self.split} split"
        elif self.data.type == "goto" and self.split == "validation":
            limit, what = GOTO_VALIDATION_IDS, "validation level ids"
        else:
            return
        if self.seed + self.episodes > limit:
            key = "episodes" if self.episodes > limit // 2 else "seed"
            raise ConfigError(f"{key}: episode k plays level seed + k, and the {what} end at seed + episodes = "
                              f"{limit:,}; got seed={self.seed}, episodes={self.episodes}")

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


def validate_demos(cfg: DictConfig | dict) -> DemosConfig:
    """Check a composed `mmrl demos` config; return it typed."""
    raw = plain_config(cfg)
    data = raw.pop("data", None)
    if data is None:
        raise ConfigError("data: required (pick an env, e.g. data=goto)")
    typed: DemosConfig = _merge(DemosConfig, raw, "")
    typed.data = merge_group("data", data)
    typed.check()
    return typed
