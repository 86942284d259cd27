"""`mmrl compare`: compare run directories (train runs, sweep trials, compress students) from their
files alone: learning curves with bootstrap bands, rliable aggregates, time to a target.

`check_compare` is the pre-flight check (one ConfigError line naming the key, nothing written);
`compare_task` is the Hydra task: read the runs, compute, write the report, print its table.
"""

from __future__ import annotations

import sys
import time

from omegaconf import DictConfig

from ..config import ConfigError
from .settings import CompareConfig, validate_compare


def check_compare(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl compare` needs settled: a valid config, readable runs of one env that carry
    every `by` key, and a writable output directory inside runs_root."""
    from ..preflight import check_output_dir
    from .records import load_records

    typed = validate_compare(cfg)
    load_records(typed.runs, typed.by)
    check_output_dir("out", typed.directory)


def run_compare(typed: CompareConfig) -> dict:
    """Read the runs, compute the comparison, write it; return the result (with `seconds`)."""
    from .records import load_records
    from .report import compare, write_report

    start = time.perf_counter()
    records = load_records(typed.runs, typed.by)
    result = compare(typed, records)
    result["out"] = str(typed.directory)
    write_report(result, typed.directory)
    result["seconds"] = time.perf_counter() - start
    return result


def print_compare(result: dict) -> None:
    """The table `mmrl compare` ends with: per group, runs, IQM and mean with intervals, time to target."""
    from rich.console import Console
    from rich.table import Table

    from .report import interval

    table = Table(title=f"mmrl compare: {result['task']}, final {result['score']} {result['metric']} by "
                        f"{', '.join(result['by'])}")
    for column in ("group", "runs", "IQM [95% CI]", "mean [95% CI]", "steps to target", "wall s to target"):
        table.add_column(column)
    for group, entry in result["groups"].items():
        to = entry.get("to_target")
        table.add_row(group, f"{entry['scored_runs']}/{entry['runs']}", interval(entry["aggregates"]["IQM"]),
                      interval(entry["aggregates"]["mean"]), interval(to["steps_median"], 0) if to else "-",
                      interval(to["wall_seconds_median"], 0) if to else "-")
    console = Console()
    console.print(table)
    for note in result["notes"]:
        print(f"mmrl compare: note: {note}", file=sys.stderr)
    console.print(f"{len(result['runs'])} runs in {result['seconds']:.1f} s; report: {result['out']}/compare.md")


def compare_task(cfg: DictConfig) -> None:
    """Hydra task of `mmrl compare`."""
    from ..exits import fail

    try:
        typed = validate_compare(cfg)
        result = run_compare(typed)
    except ConfigError as e:
        fail("compare", str(e))
    print_compare(result)
