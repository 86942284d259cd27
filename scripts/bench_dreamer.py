"""Dreamer (model-based RL, `algo=dreamer`) beside PPO: sample efficiency and wall time (issue 24).

Runs the CLI exactly as a user would, one run after another (never two at once: wall times are
part of the result; run it on an otherwise idle machine).

1. goto (the built-in default task): `exp=goto-dreamer` vs PPO's default run (`mmrl train`):
   env steps and wall seconds to first reach 0.9 validation success; the floor is Dreamer at or
   below half PPO's steps (median over seeds), with held-out success >= 0.9 at the end.
2. MiniGrid-DoorKey-5x5-v0: `exp=minigrid-dreamer` vs `exp=minigrid-ppo` at equal env steps
   (validation success curves; no published world-model result on MiniGrid exists to compare with).
3. CartPole-v1: `exp=cartpole-dreamer` to >= 475 held-out return within 50k env steps.

Every run evaluates on validation levels every `--eval-every` steps (the curves); the table gives
held-out results. Writes docs/bench/dreamer.json after every run (nothing lost) and PNG curves
(validation success or return against env steps and against wall time) per task.

    python scripts/bench_dreamer.py [--seeds 1 2 3] [--parts goto minigrid cartpole] [--quick] [--threads 2]

On 2 cores, one process per arm (``--arms goto-dreamer``, ``--threads 1``, ``--out a.json``) and
``--merge a.json b.json --out dreamer.json`` (a later file's run of the same arm and seed wins)
make one report. ``--overrides k=v ...`` go to every Dreamer arm's runs (recorded per run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from _common import ROOT, first_reaching, latest_runs, mmrl_train, print_table, read_result_files, write_json

TARGET_SUCCESS = 0.9
TARGET_CARTPOLE = 475.0
CARTPOLE_STEPS = 50_000
STEPS_FLOOR = 0.5  # Dreamer's steps to 0.9 on goto: at most this fraction of PPO's
COLOURS = {"dreamer": "tab:purple", "ppo": "tab:blue"}

# task -> [(arm name, algorithm, overrides)], and what is measured
TASKS = {
    "goto": {"metric": "success_rate", "target": TARGET_SUCCESS,
             "arms": [("goto-dreamer", "dreamer", ["exp=goto-dreamer"]), ("goto-ppo", "ppo", [])]},
    "minigrid": {"metric": "success_rate", "target": TARGET_SUCCESS,
                 "arms": [("minigrid-dreamer", "dreamer", ["exp=minigrid-dreamer"]),
                          ("minigrid-ppo", "ppo", ["exp=minigrid-ppo"])]},
    "cartpole": {"metric": "return_mean", "target": TARGET_CARTPOLE,
                 "arms": [("cartpole-dreamer", "dreamer", ["exp=cartpole-dreamer", f"total_steps={CARTPOLE_STEPS}"])]},
}


def run_task(task: str, args, runs_root: Path, results: dict) -> None:
    """Every arm of `task`, every seed: curves, steps and wall time to the target, held-out figures."""
    spec = TASKS[task]
    runs, rows = [], []
    for arm, algo, overrides in spec["arms"]:
        if args.arms and arm not in args.arms:
            continue
        if algo == "dreamer":
            overrides = [*overrides, *args.overrides]
        for seed in args.seeds:
            extra = [f"seed={seed}", f"eval.every_steps={args.eval_every}", f"hardware.threads={args.threads}",
                     "monitor.tensorboard=false"]
            if args.quick:
                extra += ["total_steps=1024", "eval.episodes=8", "algo.learning_starts=512"] if algo == "dreamer" \
                    else ["total_steps=4096", "eval.episodes=8"]
            s = mmrl_train([*overrides, *extra], runs_root)
            metric = spec["metric"]
            curve = [(e["step"], e["wall_seconds"], e["validation"][metric]) for e in s["evaluations"]]
            steps_to, wall_to = first_reaching(curve, spec["target"])
            final = s["heldout_success_rate"] if metric == "success_rate" else s["heldout_return"]
            runs.append({"arm": arm, "algo": algo, "seed": seed, "overrides": [*overrides, *extra], "curve": curve, "target": spec["target"],
                         "steps_to_target": steps_to, "wall_to_target": wall_to, "heldout": final,
                         **{k: s[k] for k in ("steps", "wall_seconds", "steps_per_second", "updates", "device")}})
            rows.append(table_row(runs[-1]))
            results[task] = {"eval_every_steps": args.eval_every, "runs": runs}
            write_json(args.out, results)
            plot(task, runs, spec, args.png_dir / f"dreamer_{task}_curves.png")
    summarise(task, runs, spec, results)
    write_json(args.out, results)
    print_table(f"{task}: held-out results and time to the target (validation)", TABLE_COLUMNS, rows)


TABLE_COLUMNS = ["arm", "seed", "held-out", "target", "steps to target", "wall s to target", "steps", "wall s", "meets"]


def table_row(run: dict) -> list:
    """One run's row of the results table."""
    return [run["arm"], run["seed"], run["heldout"], run["target"], run["steps_to_target"], run["wall_to_target"],
            run["steps"], run["wall_seconds"], "yes" if run["heldout"] >= run["target"] else "no"]


def merge(loaded: list[dict], paths: list[Path], args) -> None:
    """One report of several result files (per task, a later file's run of the same arm and seed wins)."""
    results: dict = {"quick": any(data.get("quick") for data in loaded), "merged_from": [str(path) for path in paths]}
    for task, spec in TASKS.items():
        parts = [data[task] for data in loaded if task in data]
        if not parts:
            continue
        runs = latest_runs(parts, lambda run: (run["arm"], run["seed"]))
        results[task] = {"eval_every_steps": parts[-1]["eval_every_steps"], "runs": runs}
        summarise(task, runs, spec, results)
        plot(task, runs, spec, args.png_dir / f"dreamer_{task}_curves.png")
        print_table(f"{task}: held-out results and time to the target (validation)", TABLE_COLUMNS,
                    [table_row(run) for run in runs])
    results["seeds"] = sorted({run["seed"] for task in TASKS if task in results for run in results[task]["runs"]})
    write_json(args.out, results)


def median_or_nan(values: list[float]) -> float:
    """The median of the finite values (NaN when none reached the target)."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def summarise(task: str, runs: list[dict], spec: dict, results: dict) -> None:
    """Per arm: median steps and wall seconds to the target; goto: the steps floor (<= 0.5x PPO's);
    CartPole: the target within 50k steps."""
    summary = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {"median_steps_to_target": median_or_nan([r["steps_to_target"] for r in mine]),
                        "median_wall_to_target": median_or_nan([r["wall_to_target"] for r in mine]),
                        "median_heldout": statistics.median(r["heldout"] for r in mine)}
    if task == "goto" and {"goto-dreamer", "goto-ppo"} <= summary.keys():
        dreamer, ppo = summary["goto-dreamer"]["median_steps_to_target"], summary["goto-ppo"]["median_steps_to_target"]
        summary["steps_ratio"] = dreamer / ppo if ppo and not math.isnan(ppo) else float("nan")
        summary["meets_floor"] = summary["steps_ratio"] <= STEPS_FLOOR and summary["goto-dreamer"]["median_heldout"] >= TARGET_SUCCESS
    if task == "cartpole":
        steps = summary["cartpole-dreamer"]["median_steps_to_target"]
        summary["meets_floor"] = not math.isnan(steps) and steps <= CARTPOLE_STEPS
    results[task]["summary"] = summary


def plot(task: str, runs: list[dict], spec: dict, path: Path) -> None:
    """Validation success (or return) against env steps and against wall time, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for run in runs:
        if not run["curve"]:
            continue
        steps, walls, values = zip(*run["curve"])
        label = f"{run['arm']} seed {run['seed']}"
        for ax, xs in zip(axes, (steps, walls)):
            ax.plot(xs, values, marker="o", color=COLOURS[run["algo"]], label=label, alpha=0.8)
    for ax, xlabel in zip(axes, ("env steps", "wall seconds")):
        ax.axhline(spec["target"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation " + ("success rate" if spec["metric"] == "success_rate" else "return"))
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{task}: Dreamer vs PPO")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    """Parse the arguments and run the chosen tasks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--parts", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--quick", action="store_true", help="short runs: checks the script, not the floors")
    parser.add_argument("--eval-every", type=int, default=10_000, help="validation evaluations every this many steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run (hardware.threads)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/dreamer.json")
    parser.add_argument("--png-dir", type=Path, default=ROOT / "docs/img")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (e.g. goto-dreamer goto-ppo)")
    parser.add_argument("--overrides", nargs="+", default=[], help="extra k=v overrides of every Dreamer arm's runs")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these result files into --out")
    args = parser.parse_args()
    if args.merge:
        merge(read_result_files(parser, args.merge), args.merge, args)
        return
    if args.quick:
        args.eval_every = min(args.eval_every, 1024)
        args.seeds = args.seeds[:1]
    runs_root = Path(tempfile.mkdtemp(prefix="mmrl-bench-dreamer-"))
    results: dict = {"quick": args.quick, "seeds": args.seeds}
    for task in args.parts:
        run_task(task, args, runs_root, results)


if __name__ == "__main__":
    main()
