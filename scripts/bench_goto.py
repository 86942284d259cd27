"""The built-in `goto` task: PPO (the default `mmrl train`) and A2C, several seeds, one table, one PNG.

Runs the CLI exactly as a user would, one run after another (never two at once: wall times are
part of the result), and reports for each run the final held-out success (500 held-out levels,
deterministic actions, Wilson 95% CI), the validation curve, the steps and the wall time it took
to first reach 0.9 validation success, and whether the floor (>= 0.90 held-out in under 10
minutes) is met. The PNG plots validation success against env steps and against wall time.
Validation evaluations every 50k steps (the default is 200k) give the curves their points; they
are inside the wall time, so the floor is checked on a run doing more work than the default.

    python scripts/bench_goto.py [--seeds 1 2 3] [--runs ppo a2c] [--out docs/bench/goto.json]
                                 [--png docs/img/goto_curves.png] [--a2c-overrides ...]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import ROOT, first_reaching, mmrl_train, print_table, write_json

TARGET = 0.9


def plot(runs: list[dict], path: Path) -> None:
    """Validation success vs env steps and vs wall time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = {"ppo": "tab:blue", "a2c": "tab:orange"}
    for run in runs:
        steps, walls, success = zip(*run["curve"])
        label = f"{run['name']} seed {run['seed']}"
        axes[0].plot(steps, success, marker="o", color=colours.get(run["name"], "grey"), label=label, alpha=0.8)
        axes[1].plot(walls, success, marker="o", color=colours.get(run["name"], "grey"), label=label, alpha=0.8)
    for ax, xlabel in zip(axes, ("env steps", "wall seconds (2-core CPU)")):
        ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation success rate")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("goto (5x5, 1 distractor), ViT-GPT2 policy: PPO vs A2C")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--runs", nargs="+", default=["ppo", "a2c"], choices=["ppo", "a2c"])
    parser.add_argument("--a2c-seeds", type=int, nargs="+", help="seeds of the A2C runs (default: --seeds)")
    parser.add_argument("--a2c-overrides", nargs="*", default=["algo=a2c"], help="`mmrl train` overrides of the A2C runs")
    parser.add_argument("--eval-every", type=int, default=50_000, help="validation evaluations every this many steps")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/goto.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs/img/goto_curves.png")
    args = parser.parse_args()
    overrides = {"ppo": [], "a2c": args.a2c_overrides}
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-"))
    runs, rows = [], []
    seeds = {"ppo": args.seeds, "a2c": args.a2c_seeds or args.seeds}
    for name in args.runs:
        for seed in seeds[name]:
            s = mmrl_train([f"seed={seed}", f"eval.every_steps={args.eval_every}", *overrides[name]], runs_root)
            curve = [(e["step"], e["wall_seconds"], e["validation"]["success_rate"]) for e in s["evaluations"]]
            steps_to, wall_to = first_reaching(curve, TARGET)
            meets = s["heldout_success_rate"] >= TARGET and s["wall_seconds"] < 600
            runs.append({"name": name, "seed": seed, "overrides": overrides[name], "curve": curve,
                         "steps_to_0.9": steps_to, "wall_to_0.9": wall_to, "meets_floor": meets,
                         **{k: s[k] for k in ("heldout_success_rate", "heldout_success_ci95", "heldout_return",
                                              "validation_success_rate", "steps", "wall_seconds", "steps_per_second")}})
            low, high = s["heldout_success_ci95"]
            rows.append([name, seed, f"{s['heldout_success_rate']:.3f} ({low:.3f}-{high:.3f})", steps_to, wall_to,
                         s["steps"], s["wall_seconds"], s["steps_per_second"], "yes" if meets else "no"])
            write_json(args.out, {"eval_every_steps": args.eval_every, "runs": runs})  # after every run: nothing lost
            plot(runs, args.png)
    print_table("goto: PPO (defaults) and A2C", ["algo", "seed", "held-out success (95% CI)", "steps to 0.9 (validation)",
                                                 "wall s to 0.9", "steps", "wall s", "steps/s", ">=0.9 in <600 s"], rows)


if __name__ == "__main__":
    main()
