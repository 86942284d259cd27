"""Curriculum learning and Prioritised Level Replay against their baselines, 3 seeds each.

    python scripts/bench_curriculum.py [--parts curriculum plr babyai] [--seeds 1 2 3] [--quick]

1. ``curriculum``: `mmrl train exp=goto-curriculum` (7x7 grid, 6 distractors, stages of 0/1/2/4
   distractors first) against the same task without a curriculum (``data.curriculum=none``): env
   steps to the first validation success >= 0.9 (evaluations every 25k steps, 200 episodes; the
   weights that got there are then scored on 500 held-out levels). Target: ratio <= 0.5.
2. ``plr``: `mmrl train exp=goto-plr` (200 training levels) against ``data.level_sampler=uniform``
   at equal env steps: held-out success (500 levels) at the end; the probability of improvement
   P(PLR > uniform) over all seed pairs and bootstrap 95% intervals of each arm's mean.
   ``plr-minigrid``: the same on MiniGrid DoorKey-6x6 with 200 training seeds (`exp=minigrid-plr`, 300k steps).
3. ``babyai``: `mmrl train exp=babyai-curriculum` (OneRoomS8 -> S12 -> S16 -> OneRoomS20, sampled-action
   validation) against OneRoomS20 alone: env steps to the first validation success >= 0.9 on the target.

``--arms`` runs only the named arms (e.g. one process per arm on two cores; each writes its own
``--out``) and ``--merge a.json b.json ... --out c.json`` makes one report of them (a later file's
run of the same part, arm and seed replaces an earlier one). Each finished run is written to
``--out`` at once, so a killed benchmark keeps what it measured.

``--quick`` runs every arm for a few thousand steps with small evaluations: a smoke test of the
script, not a measurement. Writes docs/bench/curriculum.json, a PNG of the validation curves
beside it, and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, FirstSuccess, heldout_success, latest_runs, print_table, read_result_files, write_json  # noqa: E402

from mmrl_cli.compose import compose_train_config  # noqa: E402
from mmrl_cli.trainer import train  # noqa: E402

TARGET = 0.9
COMMON = ["monitor.progress=false", "monitor.tensorboard=false", "checkpoint.every_updates=100000"]
QUICK = ["total_steps=2048", "eval.every_steps=1024", "eval.episodes=10"]
# Each comparison: (arm name, overrides) pairs, the first arm the method, the second its baseline.
PARTS = {
    "curriculum": [("curriculum", ["exp=goto-curriculum"]), ("no curriculum", ["exp=goto-curriculum", "data.curriculum=none"])],
    "plr": [("plr", ["exp=goto-plr"]), ("uniform", ["exp=goto-plr", "data.level_sampler=uniform"])],
    "babyai": [("sequence", ["exp=babyai-curriculum"]), ("target only", ["exp=babyai-curriculum", "data.curriculum=none"])],
    "plr-minigrid": [("plr", ["exp=minigrid-plr"]), ("uniform", ["exp=minigrid-plr", "data.level_sampler=uniform"])],
}
STOPS_AT_TARGET = {"curriculum", "babyai"}  # these compare steps to 0.9; plr compares success at equal steps


def run_arm(part: str, arm: str, overrides: list[str], seed: int, root: Path, quick: bool) -> dict:
    """One training run of one arm; its curve, steps to target (or None) and held-out success."""
    full = [*overrides, f"seed={seed}", *COMMON, *(QUICK if quick else [])]
    curve = FirstSuccess(TARGET, stop=part in STOPS_AT_TARGET)
    # Unique per invocation: a kept --runs-root gathers runs of several invocations (and variants).
    run_dir = root / f"{part}-{arm.replace(' ', '_')}-{seed}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    summary = train(compose_train_config(full), run_dir, callbacks=[curve])
    return {"part": part, "arm": arm, "seed": seed, "overrides": full, "steps": summary["steps"],
            "steps_to_target": curve.reached_steps if curve.stop else None,
            "curve": [[steps, rate] for steps, _, rate in curve.curve],
            "heldout": heldout_success(run_dir, full, 20 if quick else 500), "steps_per_second": summary["steps_per_second"]}


def probability_of_improvement(better: list[float], worse: list[float]) -> float | None:
    """P(X > Y) over all pairs of runs (ties count half): Agarwal et al. 2021's probability of improvement
    (None until both arms have runs)."""
    if not better or not worse:
        return None
    pairs = [(x > y) + 0.5 * (x == y) for x in better for y in worse]
    return sum(pairs) / len(pairs)


def bootstrap_ci(values: list[float], draws: int = 10_000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(draws))
    return [means[int(0.025 * draws)], means[int(0.975 * draws) - 1]]


def summarise(part: str, rows: list[dict]) -> dict:
    """The comparison's headline: steps ratio to 0.9 (curriculum, babyai) or PLR's improvement."""
    (method, _), (baseline, _) = PARTS[part]
    of = lambda arm: [r for r in rows if r["part"] == part and r["arm"] == arm]  # noqa: E731
    if part in STOPS_AT_TARGET:
        # A run that never reached 0.9 counts with all its steps (so the ratio is a bound, marked as such).
        steps = {arm: [r["steps_to_target"] or r["steps"] for r in of(arm)] for arm in (method, baseline)}
        missed = {arm: sum(r["steps_to_target"] is None for r in of(arm)) for arm in (method, baseline)}
        ratio = sum(steps[method]) / sum(steps[baseline]) if steps[method] and steps[baseline] else None
        return {"mean_steps": {arm: sum(v) / len(v) for arm, v in steps.items() if v}, "ratio": ratio,
                "missed_target": missed, "target_ratio": 0.5 if part == "curriculum" else 1.0}
    success = {arm: [r["heldout"] for r in of(arm)] for arm in (method, baseline)}
    return {"mean_heldout": {arm: sum(v) / len(v) for arm, v in success.items() if v},
            "ci95": {arm: bootstrap_ci(v) for arm, v in success.items() if v},
            "probability_of_improvement": probability_of_improvement(success[method], success[baseline])}


def plot(rows: list[dict], parts: list[str], path: Path) -> None:
    """Validation success against env steps: one panel per comparison, every seed of every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(parts), figsize=(5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for (arm, _), color in zip(PARTS[part], ("tab:orange", "tab:blue")):
            for r in (r for r in rows if r["part"] == part and r["arm"] == arm):
                ax.plot([p[0] for p in r["curve"]], [p[1] for p in r["curve"]], "o-", color=color, alpha=0.7,
                        label=f"{arm} seed {r['seed']}")
        ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("env steps")
        ax.set_ylabel("validation success")
        ax.set_title(part)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def steps_cell(row: dict) -> str | int:
    """A run's steps to the target as the table shows them: "-" for a part compared at equal steps
    (PLR), which does not track them; "missed" where a part that does track them never got there."""
    if row["part"] not in STOPS_AT_TARGET:
        return "-"
    return row["steps_to_target"] or "missed"


def report(rows: list[dict], out: Path, command: str, quick: bool, **extra) -> None:
    """The tables, the PNG of the curves and the JSON of every run and each comparison's summary."""
    parts = [part for part in PARTS if any(r["part"] == part for r in rows)]
    summaries = {part: summarise(part, rows) for part in parts}
    print_table("curriculum and level sampling: every run", ["part", "arm", "seed", "steps", f"steps to {TARGET}", "held-out"],
                [[r["part"], r["arm"], r["seed"], r["steps"], steps_cell(r), r["heldout"]] for r in rows])
    for part, summary in summaries.items():
        print(part, summary)
    plot(rows, parts, out.with_suffix(".png"))
    write_json(out, {"command": command, "target": TARGET, "quick": quick, "summaries": summaries, **extra, "runs": rows})


def merge(loaded: list[dict], paths: list[Path], out: Path) -> None:
    """One report from several result files (one per arm or seed): a later run of the same part,
    arm and seed replaces an earlier one."""
    rows = latest_runs(loaded, lambda r: (r["part"], r["arm"], r["seed"]))
    report(rows, out, "; ".join(data["command"] for data in loaded), any(data["quick"] for data in loaded),
           merged_from=[str(path) for path in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="a few thousand steps per run: a smoke test, not a measurement")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra mmrl overrides for every arm, e.g. data.curriculum_threshold=0.7")
    parser.add_argument("--arms", nargs="+", default=None, help="only these arms (default: both of each part)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge these result files into --out")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default docs/bench/curriculum[_quick].json)")
    parser.add_argument("--runs-root", type=Path, default=None,
                        help="train into this directory and keep the runs (default: a temporary one, deleted at the "
                             "end); `scripts/claims.py --reuse DIR` counts runs kept here")
    args = parser.parse_args()
    out = args.out or ROOT / "docs" / "bench" / ("curriculum_quick.json" if args.quick else "curriculum.json")
    if args.merge:
        merge(read_result_files(parser, args.merge), args.merge, out)
        return
    known = {arm for part in args.parts for arm, _ in PARTS[part]}
    if args.arms and not set(args.arms) <= known:
        parser.error(f"--arms: expected some of {sorted(known)}, got {args.arms}")
    torch.set_num_threads(args.threads)
    command, rows = " ".join(sys.argv), []
    with tempfile.TemporaryDirectory(prefix="mmrl-curriculum-") as tmp:
        root = args.runs_root or Path(tmp)
        for part in args.parts:
            for seed in args.seeds:  # arms alternate within a seed, so load on the machine falls on both
                for arm, overrides in PARTS[part]:
                    if args.arms and arm not in args.arms:
                        continue
                    rows.append(run_arm(part, arm, [*overrides, *args.overrides], seed, root, args.quick))
                    r = rows[-1]
                    print(f"{part} {arm} seed {seed}: steps to {TARGET} {steps_cell(r)}, held-out {r['heldout']:.3f}",
                          flush=True)
                    report(rows, out, command, args.quick)


if __name__ == "__main__":
    main()
