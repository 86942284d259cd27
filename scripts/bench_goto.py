"""Default `mmrl train` (ViT-GPT2 + PPO on goto) for several seeds: success and wall time.

Runs the CLI exactly as a user would, one seed after another, and checks the floors
(held-out success >= 0.90 in under 10 minutes per seed).

    python scripts/bench_goto.py [--seeds 1 2 3] [--out docs/bench/goto_default.json] [overrides...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import ROOT, mmrl_train, print_table, write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/goto_default.json")
    parser.add_argument("overrides", nargs="*", help="extra `mmrl train` overrides")
    args = parser.parse_args()
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-"))
    runs, rows = [], []
    for seed in args.seeds:
        s = mmrl_train([f"seed={seed}", *args.overrides], runs_root)
        ok = s["heldout_success_rate"] >= 0.9 and s["wall_seconds"] < 600
        curve = [(e["step"], round(e["wall_seconds"]), e["heldout"]["success_rate"]) for e in s["evaluations"]]
        runs.append({"seed": seed, **{k: s[k] for k in ("heldout_success_rate", "heldout_success_ci95", "heldout_return",
                                                         "steps", "wall_seconds", "steps_per_second", "device")},
                     "curve": curve, "meets_floor": ok})
        rows.append([seed, s["heldout_success_rate"], s["wall_seconds"], s["steps"], s["steps_per_second"], "yes" if ok else "NO"])
    print_table("mmrl train (defaults) " + " ".join(args.overrides),
                ["seed", "held-out success", "wall s", "steps", "steps/s", ">=0.90 in <600 s"], rows)
    write_json(args.out, {"overrides": args.overrides, "runs": runs})


if __name__ == "__main__":
    main()
