"""How long `mmrl` takes to answer what needs no training: help, config printing, tab completion and
bad input (median wall seconds of --repeats fresh processes each, in a temporary directory).

    python scripts/bench_cli.py                 # table + docs/bench/cli.json
    python scripts/bench_cli.py --repeats 3 --out /tmp/cli.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, print_table, write_json

# (what a user does, the command line, the exit status it must end with)
CASES = [
    ("mmrl --help", ["--help"], 0),
    ("mmrl train --help", ["train", "--help"], 0),
    ("mmrl train --cfg job", ["train", "--cfg", "job"], 0),
    ("one TAB of tab completion (COMP_LINE='mmrl train mod')", ["-sc", "query=bash"], 0),
    ("unknown option: mmrl train model=transformerxl", ["train", "model=transformerxl"], 2),
    ("bad value: mmrl train algo.lr=-1", ["train", "algo.lr=-1"], 2),
    ("missing run: mmrl eval run=nowhere", ["eval", "run=nowhere"], 2),
]


def time_once(args: list[str], status: int, cwd: str) -> float:
    """Wall seconds of one `python -m mmrl_cli.cli <args>` process; raises if it exits otherwise."""
    env = {**os.environ, "COMP_LINE": "mmrl train mod"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != status:
        raise RuntimeError(f"mmrl {' '.join(args)}: exit {result.returncode}, expected {status}: {result.stderr[-500:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per command line (the median is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "cli.json", help="JSON results")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats: expected at least 1, got {args.repeats}")
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for name, argv, status in CASES:
            times = [time_once(argv, status, cwd) for _ in range(args.repeats)]
            rows.append({"case": name, "argv": argv, "median_s": statistics.median(times), "all_s": times})
    print_table(f"mmrl answers without training (median of {args.repeats} processes)", ["what", "wall s"],
                [[r["case"], f"{r['median_s']:.2f}"] for r in rows])
    write_json(args.out, {"command": " ".join(["python", *sys.argv]), "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
