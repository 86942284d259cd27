"""The config of `mmrl compress` (`conf/compress.yaml` + the `compression`, `model`, `hardware`
groups), typed and checked; problems are one ConfigError line naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig

from ..compose import compose_command_config
from ..config import SEED_MAX, ConfigError, HardwareConfig, _merge, between, merge_group, positive, plain_config

METHODS = ("distill", "prune", "lowrank")  # what mmrl compress runs (kickstart is a way to train: mmrl train)


@dataclass
class ReportConfig:
    episodes: int = 500        # held-out episodes per model (teacher and students play the same levels)
    latency_batch: int = 128   # observations per timed forward pass
    latency_repeats: int = 50  # timed passes per model (median kept)
    latency_threads: int = 1   # CPU threads while timing

    MAX_REPEATS = 10_000  # a median of this many timings is as steady as timing gets; more only takes hours

    def check(self) -> None:
        positive("report", self, "episodes", "latency_batch")
        between("report", self, "latency_repeats", 1, self.MAX_REPEATS)
        between("report", self, "latency_threads", 1, 1024)


@dataclass
class CompressCommandConfig:
    teacher: str = MISSING
    runs_root: str = "runs"
    out_dir: Optional[str] = None
    seed: int = 1
    total_steps: int = 200_000
    run_name: Optional[str] = None
    compression: Any = None
    model: Any = None
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def check(self) -> None:
        from ..preflight import check_name

        between("", self, "seed", 0, SEED_MAX)
        positive("", self, "total_steps")
        check_name("run_name", self.run_name)  # it ends the student's directory name
        self.hardware.check()
        self.report.check()
        if self.compression.type not in METHODS:
            hint = " (kickstarting trains from scratch: mmrl train compression=kickstart teacher=<run dir>)" \
                if self.compression.type == "kickstart" else ""
            raise ConfigError(f"compression: expected one of {', '.join(METHODS)}, got {self.compression.type}{hint}")
        self.compression.check()
        if self.model is not None:
            self.model.check()


def validate_compress(cfg: DictConfig | dict) -> CompressCommandConfig:
    """Check a composed `mmrl compress` config; return it typed."""
    raw = plain_config(cfg)
    sections = {name: raw.pop(name, None) for name in ("compression", "model")}
    typed: CompressCommandConfig = _merge(CompressCommandConfig, raw, "")
    for group, section in sections.items():
        if section is not None:
            setattr(typed, group, merge_group(group, section))
    if typed.compression is None:
        raise ConfigError(f"compression: required (one of {', '.join(METHODS)})")
    typed.check()
    return typed


def compose_compress_config(overrides: list[str] | tuple[str, ...] = ()) -> CompressCommandConfig:
    """`mmrl compress`'s config with command-line style `overrides` (``["compression=prune",
    "teacher=runs/x"]``), validated (the teacher is not opened); raises ConfigError."""
    return validate_compress(compose_command_config("compress", overrides))
