"""Helpers shared by the benchmark scripts: tables, JSON output, running `mmrl train`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    """What the numbers were measured on."""
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """Print a rich table."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[f"{v:,.3f}" if isinstance(v, float) and abs(v) < 100 else f"{v:,.0f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)


def write_json(path: Path, data: dict) -> None:
    """Write the results (with the machine description) as JSON, atomically: a benchmark killed
    while it rewrites its file leaves the previous version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    os.replace(partial, path)
    print(f"wrote {path}")


def first_reaching(curve: list, target: float) -> tuple[float, float]:
    """(steps, wall seconds) of the first evaluation of a curve of (steps, wall seconds, value) at or
    above `target` (NaN if none; an evaluation without a value, None, never counts)."""
    for step, wall, value in curve:
        if value is not None and value >= target:
            return step, wall
    return float("nan"), float("nan")


def read_result_files(parser, paths: list[Path]) -> list[dict]:
    """The result files a `--merge` names; a missing one is one line and exit 2 (`parser.error`)."""
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        parser.error(f"--merge: no such result file: {', '.join(missing)}")
    return [json.loads(path.read_text()) for path in paths]


def latest_runs(loaded: list[dict], key) -> list[dict]:
    """The "runs" of several result files; where `key(run)` repeats, the later file's run wins."""
    return list({key(run): run for data in loaded for run in data["runs"]}.values())


def run_mmrl(*args: str) -> None:
    """Run `mmrl <args>` as a user would; raises with the end of its output on failure."""
    cmd = [sys.executable, "-m", "mmrl_cli.cli", *args]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")


def mmrl_train(overrides: list[str], runs_root: Path) -> dict:
    """Run `mmrl train <overrides>` as a user would; return its summary.json."""
    runs_root.mkdir(parents=True, exist_ok=True)
    before = set(runs_root.glob("*/*"))
    run_mmrl("train", *overrides, f"runs_root={runs_root}", "monitor.progress=false")
    (run_dir,) = set(runs_root.glob("*/*")) - before
    return json.loads((run_dir / "summary.json").read_text())


class FirstSuccess:
    """A trainer callback: every validation evaluation lands in `curve` as [env steps, wall seconds,
    success]; the first success >= `target` sets `reached` to (env steps, wall seconds) and, when
    `stop`, ends the run there."""

    def __init__(self, target: float, stop: bool = True):
        self.target, self.stop, self.start, self.reached, self.curve = target, stop, time.perf_counter(), None, []

    @property
    def reached_steps(self) -> int | None:
        """Env steps of the first evaluation at or above the target (None: not reached)."""
        return self.reached[0] if self.reached else None

    def on_evaluation(self, progress, results):
        from mmrl_cli.trainer import StopTraining

        rate = results["validation"]["success_rate"]
        self.curve.append([progress.steps, time.perf_counter() - self.start, rate])
        if rate >= self.target and self.reached is None:
            self.reached = (progress.steps, time.perf_counter() - self.start)
            if self.stop:
                raise StopTraining(f"validation success {rate:.3f} >= {self.target}")


def heldout_success(run_dir: Path, overrides: list[str], episodes: int = 500, split: str = "heldout") -> float:
    """Success of a run's final weights on `episodes` levels of `split` of the task `overrides`
    describe, with the actions its validation used (`eval.deterministic`: argmax unless set false)."""
    from mmrl_cli.builders import load_policy, pick_device
    from mmrl_cli.compose import compose_train_config
    from mmrl_cli.evaluation import evaluate

    cfg = compose_train_config(overrides)
    device = pick_device(cfg.hardware)
    policy = load_policy(cfg, run_dir / "model.safetensors", device)
    return evaluate(policy, cfg, device, split, episodes, cfg.eval.deterministic)["success_rate"]
