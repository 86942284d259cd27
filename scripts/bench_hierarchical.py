"""Hierarchical RL on the sequential built-in task against flat PPO with the same parameter budget.

    python scripts/bench_hierarchical.py [--seeds 1 2 3] [--part steps|generalise|all] [--threads 2]
    python scripts/bench_hierarchical.py --quick        # a smoke run: tiny budgets, one seed, output in /tmp
    python scripts/bench_hierarchical.py --merge s1.json s2.json s3.json   # one seed per process, then one report
    python scripts/bench_hierarchical.py --part generalise --arms "hierarchical (pretrained low)" --root runs/hier

``steps`` (the issue's first number): on the 3-step task (``data=goto-seq data.sequence_steps=[3]``),
env steps until 200 validation levels reach 0.8 success (evaluated every 20k steps), then 500
held-out levels, for:

- ``hierarchical (pretrained low)``: `algo=hierarchical` whose low level starts from a goto run
  (``data=goto data.num_distractors=3``: as many objects as a 3-step level; trained until 0.9
  validation success, its steps reported) and is fine-tuned; steps are reported both without and
  with the pretraining steps;
- ``hierarchical (scratch)``: both levels from scratch;
- ``flat ppo``: `algo=ppo` on the same task, its model widened (``model.head_hidden``) to the
  hierarchical agent's parameter count (both counts are in the table).

``generalise`` (the second number): the hierarchical agent (pretrained low) and flat PPO trained on
2- and 3-step instructions (``data.sequence_steps=[2, 3]``, a fixed budget), each then played on
500 held-out 4-step levels (observations are shaped for 4 steps whatever the training set, so the
same weights play them), beside their held-out success on 2- and 3-step levels.

Results go to docs/bench/hierarchical.json after every run (so a long benchmark can be watched and
an interrupted one keeps what it measured) and validation curves to docs/bench/hierarchical.png.
Seeds are independent: run one per process (``--seeds 2 --out s2.json --threads 1``, one per core),
then ``--merge`` their JSON files into that report (rows by part and seed, the summary recomputed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, FirstSuccess, heldout_success, latest_runs, print_table, read_result_files, write_json  # noqa: E402

from mmrl_cli.compose import compose_train_config  # noqa: E402
from mmrl_cli.trainer import train  # noqa: E402

TARGET, PRETRAIN_TARGET = 0.8, 0.9
DEFAULT_OUT = ROOT / "docs" / "bench" / "hierarchical.json"
COMMON = ["monitor.progress=false", "monitor.tensorboard=false", "checkpoint.every_updates=100000"]
TASK = ["data=goto-seq", "data.sequence_steps=[3]"]
PRETRAIN = ["data=goto", "data.num_distractors=3"]  # the low level's goto: as many objects as a 3-step level
FLAT_WIDTH = ["model.head_hidden=508"]  # flat PPO widened to the two levels' ~784k parameters
ARMS = {
    "hierarchical (pretrained low)": ["algo=hierarchical", "algo.option_steps=8", "algo.low_init_from={pretrained}"],
    "hierarchical (scratch)": ["algo=hierarchical", "algo.option_steps=8"],
    "flat ppo": ["algo=ppo", *FLAT_WIDTH],
}
GENERALISE_ARMS = {"hierarchical (pretrained low)": ARMS["hierarchical (pretrained low)"], "flat ppo": ARMS["flat ppo"]}
FULL = {"pretrain_steps": 400_000, "arm_steps": 1_000_000, "every": 20_000, "episodes": 200, "final": 500,
        "generalise_steps": 400_000}
QUICK = {"pretrain_steps": 4096, "arm_steps": 4096, "every": 2048, "episodes": 20, "final": 20, "generalise_steps": 4096}


def run(overrides: list[str], run_dir: Path, budget: dict, steps: int, target: float, stop: bool = True) -> tuple[dict, FirstSuccess]:
    """Train one arm with validation every `budget['every']` steps; returns its summary and curve."""
    watch = FirstSuccess(target, stop)
    cfg = compose_train_config([*overrides, *COMMON, f"total_steps={steps}", f"eval.every_steps={budget['every']}",
                                f"eval.episodes={budget['episodes']}"])
    return train(cfg, run_dir, callbacks=[watch]), watch


def steps_part(seeds: list[int], budget: dict, root: Path, record, arms: list[str]) -> None:
    """Per seed: the goto pretraining of the low level, then every arm of ARMS (of `arms`) to 0.8 validation success."""
    for seed in seeds:
        pretrained = root / f"pretrain-{seed}"
        summary, watch = run([*PRETRAIN, f"seed={seed}"], pretrained, budget, budget["pretrain_steps"], PRETRAIN_TARGET)
        record({"part": "steps", "arm": "goto pretraining (low level)", "seed": seed, "steps": summary["steps"],
                "steps_to_target": watch.reached_steps, "curve": watch.curve, "parameters_total": summary["parameters_total"],
                "validation": summary["validation_success_rate"]})
        for arm, extra in ((a, e) for a, e in ARMS.items() if a in arms):
            overrides = [*TASK, *(o.format(pretrained=pretrained) for o in extra), f"seed={seed}"]
            run_dir = root / f"{slug(arm)}-{seed}"
            summary, watch = run(overrides, run_dir, budget, budget["arm_steps"], TARGET)
            pretrain_steps = summary_steps(record.rows, seed) if "pretrained" in arm else 0
            record({"part": "steps", "arm": arm, "seed": seed, "steps_to_target": watch.reached_steps,
                    "steps_to_target_with_pretraining": (watch.reached_steps + pretrain_steps) if watch.reached_steps else None,
                    "pretraining_steps": pretrain_steps, "steps": summary["steps"], "curve": watch.curve,
                    "heldout": heldout_success(run_dir, overrides, budget["final"]), "overrides": overrides,
                    "parameters_total": summary["parameters_total"], "wall_seconds": summary["wall_seconds"]})


def slug(arm: str) -> str:
    """A directory name for an arm."""
    return "".join(c if c.isalnum() else "-" for c in arm).strip("-")


def summary_steps(rows: list[dict], seed: int) -> int:
    """The env steps the low level's goto pretraining of `seed` took."""
    return next(r["steps"] for r in rows if r["arm"] == "goto pretraining (low level)" and r["seed"] == seed)


def generalise_part(seeds: list[int], budget: dict, root: Path, record, arms: list[str]) -> None:
    """Per seed: each arm trained on 2- and 3-step instructions, then played on held-out 2, 3 and 4-step levels."""
    for seed in seeds:
        pretrained = root / f"pretrain-{seed}"
        if not (pretrained / "model.safetensors").is_file():
            run([*PRETRAIN, f"seed={seed}"], pretrained, budget, budget["pretrain_steps"], PRETRAIN_TARGET)
        for arm, extra in ((a, e) for a, e in GENERALISE_ARMS.items() if a in arms):
            base = ["data=goto-seq", *(o.format(pretrained=pretrained) for o in extra), f"seed={seed}"]
            run_dir = root / f"generalise-{slug(arm)}-{seed}"
            summary, watch = run([*base, "data.sequence_steps=[2,3]"], run_dir, budget, budget["generalise_steps"],
                                 TARGET, stop=False)
            scores = {f"heldout_{k}_steps": heldout_success(run_dir, [*base, f"data.sequence_steps=[{k}]"], budget["final"])
                      for k in (2, 3, 4)}
            record({"part": "generalise", "arm": arm, "seed": seed, "steps": summary["steps"], "curve": watch.curve,
                    "parameters_total": summary["parameters_total"], **scores})


def plot(rows: list[dict], path: Path) -> None:
    """Validation success against env steps, one colour per arm, one panel per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("steps", "generalise") if any(r["part"] == p and r["curve"] for r in rows)]
    if not parts:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 4), squeeze=False)
    colours = dict(zip(dict.fromkeys(r["arm"] for r in rows), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, part in zip(axes[0], parts):
        seen = set()
        for r in (r for r in rows if r["part"] == part and r["curve"]):
            ax.plot([c[0] for c in r["curve"]], [c[2] for c in r["curve"]], "o-", color=colours[r["arm"]], alpha=0.7,
                    label=None if r["arm"] in seen else r["arm"])
            seen.add(r["arm"])
        ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("env steps")
        ax.set_ylabel("validation success")
        ax.set_title("3-step task" if part == "steps" else "trained on 2- and 3-step instructions")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean(values: list) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def summarise(rows: list[dict]) -> dict:
    """Steps to 0.8 per arm and seed, their means over the runs that reached it (with and without the
    pretraining), the runs that missed it, and generalisation."""
    arms = dict.fromkeys(r["arm"] for r in rows if r["part"] == "steps")
    steps = {a: mean([r["steps_to_target"] for r in rows if r["arm"] == a and r["part"] == "steps"]) for a in arms}
    with_pretraining = {a: mean([r.get("steps_to_target_with_pretraining") for r in rows
                                 if r["arm"] == a and r["part"] == "steps"]) for a in arms if a in ARMS}
    generalise = {a: {k: mean([r[k] for r in rows if r["arm"] == a and r["part"] == "generalise"])
                      for k in ("heldout_2_steps", "heldout_3_steps", "heldout_4_steps")}
                  for a in dict.fromkeys(r["arm"] for r in rows if r["part"] == "generalise")}
    by_seed = {a: [r["steps_to_target"] for r in rows if r["arm"] == a and r["part"] == "steps"] for a in arms}
    return {"steps_to_target_by_seed": by_seed,  # None: the target was not reached within the budget
            "steps_to_target_mean": steps, "steps_to_target_with_pretraining_mean": with_pretraining,
            "missed_target": [[r["arm"], r["seed"]] for r in rows if r["part"] == "steps" and r["steps_to_target"] is None],
            "generalisation_mean": generalise}


class Recorder:
    """Collects result rows and rewrites the JSON and the PNG after every run."""

    def __init__(self, out: Path, command: str, budget: dict):
        self.out, self.command, self.budget, self.rows = out, command, budget, []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        print({k: v for k, v in row.items() if k not in ("curve", "overrides")}, flush=True)
        write_json(self.out, {"command": self.command, "target": TARGET, "budget": self.budget,
                              "summary": summarise(self.rows), "runs": self.rows})
        plot(self.rows, self.out.with_suffix(".png"))


def merge(loaded: list[dict], paths: list[Path], out: Path) -> None:
    """One report from the result files of runs of single seeds (or of some arms): rows by part then seed,
    the summary recomputed; where two files have a row of the same part, arm and seed, the later file's wins."""
    rows = sorted(latest_runs(loaded, lambda r: (r["part"], r["arm"], r["seed"])), key=lambda r: (r["part"] != "steps", r["seed"]))
    commands = "; ".join(data["command"] for data in loaded)
    summary = summarise(rows)
    write_json(out, {"command": commands, "merged_from": [str(p) for p in paths], "target": TARGET,
                     "budget": loaded[0]["budget"], "summary": summary, "runs": rows})
    plot(rows, out.with_suffix(".png"))
    print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["steps", "generalise", "all"], default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny budgets, one seed, output in a temp dir")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="which arms to run")
    parser.add_argument("--root", type=Path, default=None,
                        help="keep the runs here (default: a temporary directory); a goto pretraining run found "
                             "here (pretrain-<seed>) is reused by the generalise part")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="merge these result files (one per seed) into --out (default docs/bench/hierarchical.json)")
    args = parser.parse_args()
    if args.merge:
        merge(read_result_files(parser, args.merge), args.merge, args.out or DEFAULT_OUT)
        return
    torch.set_num_threads(args.threads)
    budget = QUICK if args.quick else FULL
    seeds = args.seeds[:1] if args.quick else args.seeds
    with tempfile.TemporaryDirectory(prefix="mmrl-hierarchical-") as tmp:
        root = args.root or Path(tmp)
        out = args.out or (Path(tmp) / "hierarchical.json" if args.quick else DEFAULT_OUT)
        record = Recorder(out, " ".join(sys.argv), budget)
        if args.part in ("steps", "all"):
            steps_part(seeds, budget, root, record, args.arms)
        if args.part in ("generalise", "all"):
            generalise_part(seeds, budget, root, record, args.arms)
        rows = record.rows
        table = [[r["part"], r["arm"], r["seed"], r.get("steps_to_target"), r.get("steps_to_target_with_pretraining"),
                  r.get("heldout"), r.get("heldout_4_steps"), f"{r['parameters_total']:,}"] for r in rows]
        print_table(f"sequential goto: env steps to {TARGET} validation success; held-out success",
                    ["part", "arm", "seed", "steps to 0.8", "with pretraining", "held-out", "held-out 4-step",
                     "parameters"], table)
        print(summarise(rows))
        if args.quick:
            print(f"quick run: results were in {out} (a temporary directory, now removed)")


if __name__ == "__main__":
    main()
