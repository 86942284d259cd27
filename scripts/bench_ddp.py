"""Several ranks on one machine: `mmrl train hardware=ddp hardware.nproc=2` (gloo, one thread per
rank) vs one rank of one thread, same total env steps, the default run (ViT-GPT2 + PPO on the
built-in `goto` task). Each rank plays its own 128 envs, so two ranks collect twice the
transitions per update and make half the updates. Two 2-rank layouts: `hardware=ddp` as is (each
rank steps on its own minibatch of `algo.batch_size` = 512: weak scaling, the same work per rank
as the single rank), and `algo.batch_size=256` (the single rank's global minibatch of 512: twice
as many, smaller steps per rank). Steps/s is training time only (the periodic and final evaluations excluded).
Floor: 2 ranks >= 1.6x one rank on a 2-core machine.

    python scripts/bench_ddp.py [--steps 61440] [--repeats 2] [--out docs/bench/ddp.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import ROOT, mmrl_train, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=61_440, help="env steps per run (all ranks together)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per layout, alternating")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra mmrl train overrides (both layouts)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/ddp.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mmrl-bench-ddp-"))
    common = [f"total_steps={args.steps}", f"eval.every_steps={10 * args.steps}", "eval.episodes=50",
              "monitor.tensorboard=false", *args.overrides]
    layouts = {"1 rank, 1 thread": ["hardware=cpu", "hardware.threads=1"],
               # hardware=ddp as is: each rank's minibatch is algo.batch_size = 512 (weak scaling, as CleanRL)
               "2 ranks (gloo), 1 thread each, minibatch 2 x 512": ["hardware=ddp", "hardware.nproc=2", "hardware.threads=1"],
               # the single rank's global minibatch of 512: each rank steps on 256, twice as many (smaller) steps
               "2 ranks (gloo), 1 thread each, minibatch 2 x 256": ["hardware=ddp", "hardware.nproc=2", "hardware.threads=1",
                                                                    "algo.batch_size=256"]}
    runs: dict[str, list[dict]] = {name: [] for name in layouts}
    for repeat in range(args.repeats):
        for name, layout in layouts.items():
            summary = mmrl_train(common + layout, root / f"{repeat}-{list(layouts).index(name)}")
            runs[name].append({"steps_per_second": summary["train_steps_per_second"], "updates": summary["updates"],
                               "heldout_success_rate": summary["heldout_success_rate"]})
    sps = {name: statistics.median(r["steps_per_second"] for r in rs) for name, rs in runs.items()}
    names = list(layouts)
    speedup = sps[names[1]] / sps[names[0]]
    same_global_minibatch = sps[names[2]] / sps[names[0]]
    rows = [[name, " ".join(f"{r['steps_per_second']:,.0f}" for r in runs[name]), sps[name], sps[name] / sps[names[0]],
             runs[name][0]["updates"]] for name in names]
    print_table(f"steps/s, default run, {args.steps:,} steps (training time only): 2 ranks = {speedup:.2f}x "
                f"(same global minibatch: {same_global_minibatch:.2f}x)",
                ["layout", "runs", "median steps/s", "x 1 rank", "updates"], rows)
    write_json(args.out, {"steps": args.steps, "overrides": args.overrides, "runs": runs, "median_steps_per_second": sps,
                          "speedup": speedup, "speedup_same_global_minibatch": same_global_minibatch})


if __name__ == "__main__":
    main()
