"""Find the run directories `mmrl compare` reads and what each holds: its config, its validation
curve (env steps, wall seconds, success and return at each periodic evaluation) and its final score.

A run directory holds `config.yaml`; a finished run also `summary.json`. An unfinished run (stopped,
pruned, still training) is read from its latest checkpoint's `meta.json` (the progress counters it
saved). `runs` entries are run directories, globs, or directories with runs anywhere below them (a
runs root, a sweep's `trials/`, a compress output directory).
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from ..config import ConfigError

NAN = float("nan")


@dataclass
class RunRecord:
    """One run as compare sees it."""

    path: Path
    config: dict  # the run's composed config, as plain data
    evaluations: list  # periodic validation evaluations: dicts with step, wall_seconds, validation
    heldout: dict  # the final held-out evaluation ({} if the run has none yet)
    finished: bool  # summary.json exists
    reached_stop_at: bool = False  # it ended at its eval.stop_at target (done, not cut short)
    group: str = ""
    task: str = ""
    extra: dict = field(default_factory=dict)

    def curve(self, metric: str) -> tuple[list[float], list[float], list[float]]:
        """(env steps, wall seconds, value) of every validation evaluation that measured `metric`."""
        key = "success_rate" if metric == "success" else "return_mean"
        points = [(e["step"], e["wall_seconds"], e["validation"].get(key)) for e in self.evaluations]
        points = [(s, w, float(v)) for s, w, v in points if v is not None and math.isfinite(float(v))]
        return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]

    def score(self, metric: str, which: str) -> float:
        """The run's final score: its held-out evaluation, or its last validation evaluation (NaN if none)."""
        key = "success_rate" if metric == "success" else "return_mean"
        if which == "heldout":
            value = self.heldout.get(key)
        else:
            value = self.evaluations[-1]["validation"].get(key) if self.evaluations else None
        return NAN if value is None else float(value)


def is_run(path: Path) -> bool:
    """A run directory: a config.yaml beside a summary.json or a checkpoints/ directory."""
    return (path / "config.yaml").is_file() and ((path / "summary.json").is_file() or (path / "checkpoints").is_dir())


def find_runs(entries: list[str]) -> list[Path]:
    """The run directories `entries` name (each a run, a glob, or a directory with runs below it),
    sorted and without repeats; ConfigError naming an entry that matches nothing."""
    found: dict[Path, None] = {}
    for entry in entries:
        matches = [Path(p) for p in sorted(glob.glob(str(Path(entry).expanduser())))] if glob.has_magic(entry) \
            else [Path(entry).expanduser()]
        runs = []
        for path in matches:
            if is_run(path):
                runs.append(path)
            elif path.is_dir():
                runs += sorted(p.parent for p in path.glob("**/config.yaml") if is_run(p.parent) and
                               "checkpoints" not in p.relative_to(path).parts)
        if not runs:
            what = "no such file or directory" if not matches or not any(p.exists() for p in matches) else "no mmrl run in it"
            raise ConfigError(f"runs: {entry!r} matches no run directory ({what}; a run holds config.yaml and summary.json)")
        found.update(dict.fromkeys(p.resolve() for p in runs))
    return sorted(found)


def read_run(path: Path) -> RunRecord:
    """The config, curve and held-out result of the run at `path` (ConfigError if unreadable)."""
    try:
        config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
    except Exception as e:  # noqa: BLE001 - a broken file is reported as one line, whatever broke
        raise ConfigError(f"runs: {path}/config.yaml is not a valid config ({str(e).splitlines()[0]})") from None
    summary_path = path / "summary.json"
    if summary_path.is_file():
        progress, finished = read_json(summary_path), True
        heldout = {"success_rate": progress.get("heldout_success_rate"), "return_mean": progress.get("heldout_return")}
    else:
        progress, finished = latest_progress(path), False
        heldout = progress.get("heldout") or {}
    evaluations = progress.get("evaluations") or []
    if not isinstance(evaluations, list) or not all(
            isinstance(e, dict) and isinstance(e.get("validation"), dict) and "step" in e and "wall_seconds" in e
            for e in evaluations):
        raise ConfigError(f"runs: {path}: its evaluations are not a list of {{step, wall_seconds, validation}} records")
    return RunRecord(path, config, evaluations, {k: v for k, v in heldout.items() if v is not None}, finished,
                     reached_stop_at=finished and progress.get("reached_stop_at") is True)


def read_json(path: Path) -> dict:
    """A JSON object from `path` (ConfigError naming the file otherwise)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"runs: {path} could not be read ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"runs: {path} is not a JSON object")
    return data


def latest_progress(path: Path) -> dict:
    """The progress counters of an unfinished run's newest checkpoint ({} if it has none)."""
    metas = sorted((path / "checkpoints").glob("*/meta.json"))
    for meta in reversed(metas):
        try:
            progress = json.loads(meta.read_text())["state"]["progress"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a checkpoint being written or damaged: try the one before
        if isinstance(progress, dict):
            return progress
    return {}


def config_value(record: RunRecord, key: str):
    """The value of dotted `key` in a run's config; ConfigError naming the key where it does not exist."""
    node = record.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
            raise ConfigError(f"by: no key {key!r} in {record.path}/config.yaml (keys at that level: {known})")
        node = node[part]
    return node


def task_of(record: RunRecord) -> str:
    """The env a run trains on: the data type, the gymnasium id, and goto's sequence length."""
    data = record.config.get("data") or {}
    kind = str(data.get("type"))
    if kind == "gym":
        return f"gym:{data.get('env_id')}"
    if kind == "goto" and data.get("sequence_steps"):
        return f"goto-seq{data.get('sequence_steps')}"
    return kind


def load_records(entries: list[str], by: list[str]) -> list[RunRecord]:
    """Every run `entries` name, read, labelled with its group (the values of `by`) and its task;
    ConfigError where the runs are not comparable (different envs)."""
    records = [read_run(p) for p in find_runs(entries)]
    for record in records:
        values = [config_value(record, key) for key in by]
        record.group = " / ".join(str(v) for v in values)
        record.task = task_of(record)
    tasks = sorted({r.task for r in records})
    if len(tasks) > 1:
        counts = ", ".join(f"{t} ({sum(r.task == t for r in records)} runs)" for t in tasks)
        raise ConfigError(f"runs: compare takes runs of one env; these are on {counts}: compare each env on its own")
    return records
