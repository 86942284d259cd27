"""A3C: scaling with workers on CartPole, and success beside A2C on CartPole-v1 and the goto task.

Runs the CLI exactly as a user would, one run after another (never two at once: wall times and
steps/s are part of the result; run it on an otherwise idle machine).

1. Scaling: steps/s of `exp=cartpole-a3c` with 1, 2, ... workers (`--workers`, default 1 2; the
   floor is >= 1.6x one worker's at 2 workers; Mnih et al. 2016, Table 2: 2.1x at 2 threads,
   3.7x at 4, 6.9x at 8, 12.5x at 16), for a fixed number of env steps, evaluation-free
   (one tiny final evaluation). Speed-up is the median over seeds.
2. Success: `exp=cartpole-a3c` to >= 475 held-out return, `exp=goto-a3c` to >= 0.9 held-out
   success, and `exp=goto-a2c` beside it (steps and wall seconds to first reach 0.9 validation
   success), `--seeds` seeds each; validation every `--eval-every` steps for the curves.

Writes docs/bench/a3c.json (after every run: nothing lost) and a PNG of the goto curves
(validation success against env steps and wall time, A3C beside A2C).

    python scripts/bench_a3c.py [--seeds 1 2 3] [--workers 1 2] [--quick] [--parts scaling success]
        [--presets cartpole-a3c goto-a3c goto-a2c] [--runs-root DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import ROOT, first_reaching, mmrl_train, print_table, write_json

TARGET_SUCCESS = 0.9
TARGET_CARTPOLE = 475.0
SCALING_FLOOR = 1.6
PAPER_SPEEDUP = {1: 1.0, 2: 2.1, 4: 3.7, 8: 6.9, 16: 12.5}  # Mnih et al. 2016, Table 2 (A3C, Atari)
COLOURS = {"a3c": "tab:green", "a2c": "tab:orange"}


def scaling(args, runs_root: Path, results: dict) -> None:
    """Steps/s of cartpole-a3c at each worker count; speed-up over one worker (median over seeds)."""
    steps = 20_000 if args.quick else 200_000
    rows, runs = [], []
    for workers in args.workers:
        for seed in args.seeds:
            s = mmrl_train(["exp=cartpole-a3c", f"algo.workers={workers}", f"seed={seed}", f"total_steps={steps}",
                            f"eval.every_steps={10 * steps}", "eval.episodes=4", "monitor.tensorboard=false"], runs_root)
            runs.append({"workers": workers, "seed": seed, "steps": s["steps"], "wall_seconds": s["wall_seconds"],
                         "train_steps_per_second": s["train_steps_per_second"]})
            results["scaling"] = {"total_steps": steps, "runs": runs}
            write_json(args.out, results)
    base = statistics.median(r["train_steps_per_second"] for r in runs if r["workers"] == args.workers[0])
    speedups = {}
    for workers in args.workers:
        sps = statistics.median(r["train_steps_per_second"] for r in runs if r["workers"] == workers)
        speedups[workers] = sps / base
        paper = PAPER_SPEEDUP.get(workers)
        floor = "" if workers != 2 else ("yes" if sps / base >= SCALING_FLOOR else "no")
        rows.append([workers, sps, sps / base, "-" if paper is None else paper, floor])
    results["scaling"]["speedup"] = speedups
    write_json(args.out, results)
    print_table("A3C scaling on CartPole-v1 (train steps/s, median over seeds)",
                ["workers", "steps/s", f"speed-up over {args.workers[0]}", "paper (Table 2)", f">= {SCALING_FLOOR}x"], rows)


def success_runs(args, runs_root: Path, results: dict) -> None:
    """cartpole-a3c, goto-a3c and goto-a2c, every seed; held-out figures and time to 0.9."""
    arms = [("cartpole-a3c", "a3c", "return"), ("goto-a3c", "a3c", "success"), ("goto-a2c", "a2c", "success")]
    runs, rows = [], []
    for preset, algo, kind in arms:
        if preset not in args.presets:
            continue
        for seed in args.seeds:
            overrides = [f"exp={preset}", f"seed={seed}", f"eval.every_steps={args.eval_every}"]
            if args.quick:
                overrides += ["total_steps=20000", "eval.episodes=20"]
            s = mmrl_train(overrides, runs_root)
            key = "success_rate" if kind == "success" else "return_mean"
            curve = [(e["step"], e["wall_seconds"], e["validation"][key]) for e in s["evaluations"]]
            target = TARGET_SUCCESS if kind == "success" else TARGET_CARTPOLE
            steps_to, wall_to = first_reaching(curve, target)
            final = s["heldout_success_rate"] if kind == "success" else s["heldout_return"]
            runs.append({"preset": preset, "algo": algo, "seed": seed, "curve": curve, "target": target,
                         "steps_to_target": steps_to, "wall_to_target": wall_to, "heldout": final,
                         "meets_floor": final >= target,
                         **{k: s[k] for k in ("heldout_success_rate", "heldout_return", "steps", "wall_seconds",
                                              "steps_per_second")}})
            rows.append([preset, seed, final, target, steps_to, wall_to, s["steps"], s["wall_seconds"],
                         s["steps_per_second"], "yes" if final >= target else "no"])
            results["success"] = {"eval_every_steps": args.eval_every, "runs": runs}
            write_json(args.out, results)
            plot(runs, args.png)
    print_table("A3C beside A2C: held-out results and time to the target (validation)",
                ["preset", "seed", "held-out", "target", "steps to target", "wall s to target", "steps", "wall s",
                 "steps/s", "meets"], rows)


def plot(runs: list[dict], path: Path) -> None:
    """goto: validation success vs env steps and vs wall time, A3C beside A2C, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    goto = [r for r in runs if r["preset"].startswith("goto")]
    if not goto:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in goto:
        steps, walls, success = zip(*run["curve"])
        label = f"{run['algo']} seed {run['seed']}"
        axes[0].plot(steps, success, marker="o", color=COLOURS[run["algo"]], label=label, alpha=0.8)
        axes[1].plot(walls, success, marker="o", color=COLOURS[run["algo"]], label=label, alpha=0.8)
    for ax, xlabel in zip(axes, ("env steps", "wall seconds")):
        ax.axhline(TARGET_SUCCESS, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation success rate")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("goto, ViT-GPT2 policy: A3C (exp=goto-a3c) vs A2C (exp=goto-a2c)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    """Parse the arguments and run the chosen parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts of the scaling curve")
    parser.add_argument("--parts", nargs="+", default=["scaling", "success"], choices=["scaling", "success"])
    parser.add_argument("--presets", nargs="+", default=["cartpole-a3c", "goto-a3c", "goto-a2c"],
                        choices=["cartpole-a3c", "goto-a3c", "goto-a2c"], help="which presets the success part runs")
    parser.add_argument("--runs-root", type=Path, default=None,
                        help="keep the run directories here (default: a temporary directory), e.g. for `mmrl compare`")
    parser.add_argument("--quick", action="store_true", help="short runs: checks the script, not the floors")
    parser.add_argument("--eval-every", type=int, default=50_000, help="validation evaluations every this many steps")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/a3c.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs/img/a3c_goto_curves.png")
    args = parser.parse_args()
    if args.quick:
        args.eval_every = min(args.eval_every, 10_000)
    runs_root = args.runs_root or Path(tempfile.mkdtemp(prefix="mmrl-bench-a3c-"))
    results: dict = {"quick": args.quick, "seeds": args.seeds}
    if "scaling" in args.parts:
        scaling(args, runs_root, results)
    if "success" in args.parts:
        success_runs(args, runs_root, results)


if __name__ == "__main__":
    main()
