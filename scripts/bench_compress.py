"""`mmrl compress` against its floors, with the default `mmrl train` run as the teacher.

1. Compression (3 seeds each, one shared report): distillation into `vit-gpt2-tiny` (13x fewer
   parameters), 90% unstructured magnitude pruning with fine-tuning, structured pruning (75% of
   every group of residual channels, heads, neurons and conv channels removed; `prune-structured`:
   70%) with fine-tuning; low-rank is not run by default (see docs/benchmarks.md).
   Floors: the student >= 95% of the teacher's held-out success; 90% sparsity also a smaller
   file; structured or low-rank >= 2x lower CPU latency.
2. Kickstarting vs from scratch (3 seeds each): the env steps until a validation evaluation
   first reaches 0.9 success. Floor: kickstarting needs at most half the steps.

    python scripts/bench_compress.py --teacher runs/<date>/<time> [--seeds 1 2 3] [--out docs/bench/compress.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _common import ROOT, mmrl_train, print_table, write_json

METHODS = {  # name: mmrl compress overrides
    "distill": ["compression=distill", "total_steps=200000"],
    "prune-0.9": ["compression=prune", "compression.sparsity=0.9", "total_steps=200000"],
    "prune-structured": ["compression=prune", "compression.structured=true", "compression.amount=0.7", "total_steps=200000"],
    "prune-structured-0.75": ["compression=prune", "compression.structured=true", "compression.amount=0.75",
                              "total_steps=200000"],
    "lowrank": ["compression=lowrank", "compression.energy=0.8", "total_steps=100000"],
}


def compress(teacher: str, out_dir: Path, overrides: list[str]) -> dict:
    """Run `mmrl compress` as a user would; return its report.json."""
    cmd = [sys.executable, "-m", "mmrl_cli.cli", "compress", f"teacher={teacher}", f"out_dir={out_dir}", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return json.loads((out_dir / "report.json").read_text())


def measure_again(teacher: str, out_dir: Path) -> dict:
    """The report of everything in `out_dir`, measured now (`mmrl compress`'s own report step)."""
    from mmrl_cli.compress.report import write_report
    from mmrl_cli.compress.settings import validate_compress
    from mmrl_cli.compress.teacher import trained_run

    cfg = validate_compress({"teacher": teacher, "out_dir": str(out_dir), "compression": {"type": "prune"}})
    return write_report(out_dir, trained_run(teacher, cfg.runs_root, "teacher"), cfg)


def steps_to(summary: dict, target: float) -> int | None:
    """Env steps of the first validation evaluation at or above `target` success (None: never)."""
    return next((e["step"] for e in summary["evaluations"] if (e["validation"]["success_rate"] or 0) >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the teacher run (a default `mmrl train` run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="*", default=["distill", "prune-0.9", "prune-structured-0.75"],
                        help=f"of {', '.join(METHODS)}")
    parser.add_argument("--kickstart-steps", type=int, default=200_000, help="env steps of each kickstarted run")
    parser.add_argument("--scratch-steps", type=int, default=400_000, help="env steps of each run from scratch")
    parser.add_argument("--skip-kickstart", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only measure the teacher and the students already in --out-dir again (on a quiet machine)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench-results/compress")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/compress.json")
    args = parser.parse_args()
    results: dict = {"teacher": args.teacher, "seeds": args.seeds}

    report = None
    for method in [] if args.report_only else args.methods:
        for seed in args.seeds:
            report = compress(args.teacher, args.out_dir, [*METHODS[method], f"seed={seed}", "hardware.threads=2"])
    if args.report_only:
        report = measure_again(args.teacher, args.out_dir)
    if report is not None:
        rows = report["rows"]
        results["compression_rows"] = rows
        teacher = rows[0]
        table = []
        for method in sorted({r["method"] for r in rows[1:]}):
            group = [r for r in rows[1:] if r["method"] == method]
            table.append([method, len(group), statistics.mean(r["parameters_ratio"] for r in group),
                          statistics.mean(r["nonzero_ratio"] for r in group), statistics.mean(r["file_ratio"] for r in group),
                          statistics.mean(r["speedup"] for r in group),
                          " ".join(f"{r['success_rate']:.3f}" for r in group),
                          statistics.mean(r["success_kept"] for r in group)])
        print_table(f"compression vs teacher (held-out success {teacher['success_rate']:.3f}, "
                    f"{teacher['parameters']:,} params, {teacher['latency_ms']:.2f} ms/batch)",
                    ["method", "seeds", "fewer params", "fewer non-zero", "smaller file", "CPU speed-up",
                     "held-out success per seed", "success kept (mean)"], table)
        results["compression_table"] = table

    if not args.skip_kickstart and not args.report_only:
        root = args.out_dir / "kickstart"
        common = ["eval.every_steps=16384", "eval.episodes=200", "monitor.tensorboard=false", "hardware.threads=2"]
        runs = {"from scratch": [], "kickstart": []}
        for seed in args.seeds:
            scratch = mmrl_train([*common, f"seed={seed}", f"total_steps={args.scratch_steps}"], root / "scratch")
            kick = mmrl_train([*common, f"seed={seed}", f"total_steps={args.kickstart_steps}", "compression=kickstart",
                               f"teacher={args.teacher}"], root / "kickstart")
            runs["from scratch"].append({"seed": seed, "steps_to_0.9": steps_to(scratch, 0.9),
                                         "heldout_success_rate": scratch["heldout_success_rate"]})
            runs["kickstart"].append({"seed": seed, "steps_to_0.9": steps_to(kick, 0.9),
                                      "heldout_success_rate": kick["heldout_success_rate"]})
        results["kickstart"] = runs
        rows = [[name, " ".join(str(r["steps_to_0.9"]) for r in rs), " ".join(f"{r['heldout_success_rate']:.3f}" for r in rs)]
                for name, rs in runs.items()]
        print_table("env steps until validation success >= 0.9 (evaluated every 16,384 steps)",
                    ["run", "steps per seed", "final held-out success per seed"], rows)
        reached = {name: [r["steps_to_0.9"] for r in rs] for name, rs in runs.items()}
        if all(v is not None for vs in reached.values() for v in vs):
            ratio = statistics.mean(reached["kickstart"]) / statistics.mean(reached["from scratch"])
            results["kickstart_steps_ratio"] = ratio
            print(f"kickstart needs {ratio:.2f}x the env steps of training from scratch (floor: <= 0.5)")
    write_json(args.out, results)


if __name__ == "__main__":
    main()
