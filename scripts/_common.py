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
    """Write the results (with the machine description) as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    print(f"wrote {path}")


def mmrl_train(overrides: list[str], runs_root: Path) -> dict:
    """Run `mmrl train <overrides>` as a user would; return its summary.json."""
    runs_root.mkdir(parents=True, exist_ok=True)
    before = set(runs_root.glob("*/*"))
    cmd = [sys.executable, "-m", "mmrl_cli.cli", "train", *overrides, f"runs_root={runs_root}", "monitor.progress=false"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    (run_dir,) = set(runs_root.glob("*/*")) - before
    return json.loads((run_dir / "summary.json").read_text())
