"""Synthetic data saves compute: demonstrations + behaviour cloning + RL fine-tuning against RL
from scratch, in wall time to 0.9 success on the built-in goto task.

    python scripts/bench_synthetic.py [--seeds 1 2 3] [--demos 2000] [--bc-updates 300]

Scratch: `mmrl train exp=goto-a2c` (A2C needs >= 400k env steps here; docs/benchmarks.md).
Synthetic, per seed: `mmrl demos episodes=<demos> seed=<seed>` (the shortest-path planner on
training levels), `mmrl train algo=bc algo.demos=... algo.updates=<bc-updates>`, then
`mmrl train exp=goto-a2c init_from=<bc run> algo.lr=2e-4 algo.ent_coef=0.001` (`--finetune`). Both arms evaluate on 200 validation levels
every 25k env steps (BC: at its end) and stop at the first validation success >= 0.9; the wall
time counts everything from the start of each stage (demos, BC with its evaluation, RL) to
that evaluation. The weights that got there are then scored on 500 held-out levels (not timed).
Seeds alternate between the arms so that any load on the machine falls on both. Writes
docs/bench/synthetic.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, print_table, write_json  # noqa: E402

from mmrl_cli.builders import load_policy, pick_device  # noqa: E402
from mmrl_cli.compose import compose_train_config  # noqa: E402
from mmrl_cli.demos.command import run_demos  # noqa: E402
from mmrl_cli.demos.settings import DemosConfig  # noqa: E402
from mmrl_cli.config import GotoDataConfig  # noqa: E402
from mmrl_cli.evaluation import evaluate  # noqa: E402
from mmrl_cli.trainer import StopTraining, train  # noqa: E402

TARGET = 0.9
COMMON = ["monitor.progress=false", "monitor.tensorboard=false", "eval.episodes=200", "checkpoint.every_updates=100000"]
RL = ["exp=goto-a2c", "eval.every_steps=25000", *COMMON]


class FirstSuccess:
    """Stops the run at the first validation success >= TARGET; records when (wall time since `start`)."""

    def __init__(self, start: float):
        self.start, self.reached_at, self.curve = start, None, []

    def on_evaluation(self, progress, results):
        rate = results["validation"]["success_rate"]
        self.curve.append([progress.steps, progress.update, time.perf_counter() - self.start, rate])
        if rate >= TARGET:
            self.reached_at = time.perf_counter() - self.start
            raise StopTraining(f"validation success {rate:.3f} >= {TARGET}")


def heldout(run_dir: Path, overrides: list[str]) -> float:
    """Held-out success (500 levels, argmax) of the weights a run ended with."""
    cfg = compose_train_config(overrides)
    device = pick_device(cfg.hardware)
    policy = load_policy(cfg, run_dir / "model.safetensors", device)
    return evaluate(policy, cfg, device, "heldout", 500, True)["success_rate"]


def scratch(seed: int, root: Path) -> dict:
    """RL from scratch to the first validation success >= 0.9."""
    overrides = [*RL, f"seed={seed}"]
    stop = FirstSuccess(time.perf_counter())
    summary = train(compose_train_config(overrides), root / f"scratch-{seed}", callbacks=[stop])
    return {"arm": "scratch", "seed": seed, "wall_to_target": stop.reached_at, "steps_to_target": summary["steps"],
            "curve": stop.curve, "heldout": heldout(root / f"scratch-{seed}", overrides),
            "steps_per_second": summary["steps_per_second"]}


def synthetic(seed: int, root: Path, demos: int, bc_updates: int, finetune: list[str]) -> dict:
    """Demos, behaviour cloning, then RL from the cloned policy to the first validation success >= 0.9."""
    start = time.perf_counter()
    typed = DemosConfig(data=GotoDataConfig(), episodes=demos, shard_episodes=1000, seed=seed * 100_000,
                        runs_root=str(root), out=str(root / f"demos-{seed}"), progress=False)
    typed.check()
    run_demos(typed)
    demos_seconds = time.perf_counter() - start

    bc_start = time.perf_counter()
    bc_overrides = ["algo=bc", f"algo.demos={root / f'demos-{seed}'}", f"algo.updates={bc_updates}",
                    f"algo.eval_every_updates={bc_updates}", f"seed={seed}", *COMMON]
    bc = train(compose_train_config(bc_overrides), root / f"bc-{seed}")
    bc_seconds = time.perf_counter() - bc_start
    bc_validation = bc["validation_success_rate"]

    rl_start = time.perf_counter()
    rl_overrides = [*RL, f"seed={seed}", f"init_from={root / f'bc-{seed}'}", *finetune]
    stop = FirstSuccess(rl_start)
    summary = train(compose_train_config(rl_overrides), root / f"rl-{seed}", callbacks=[stop])
    rl_seconds = stop.reached_at
    total = None if rl_seconds is None else demos_seconds + bc_seconds + rl_seconds
    return {"arm": "synthetic", "seed": seed, "wall_to_target": total, "steps_to_target": summary["steps"],
            "demos_seconds": demos_seconds, "bc_seconds": bc_seconds, "bc_validation": bc_validation,
            "rl_seconds": rl_seconds, "curve": stop.curve, "heldout": heldout(root / f"rl-{seed}", rl_overrides)}


def plot(rows: list[dict], path: Path) -> None:
    """Validation success against wall time, both arms, every seed (the synthetic arm's RL curve
    is shifted by its demos + BC time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        shift = r.get("demos_seconds", 0) + r.get("bc_seconds", 0)
        xs, ys = [shift + c[2] for c in r["curve"]], [c[3] for c in r["curve"]]
        if r["arm"] == "synthetic":  # the cloned policy's validation success, where RL starts
            xs, ys = [shift] + xs, [r["bc_validation"]] + ys
        ax.plot(xs, ys, "o-", color="tab:blue" if r["arm"] == "scratch" else "tab:orange", alpha=0.8,
                label=f"{r['arm']} seed {r['seed']}")
    ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("wall time (s), demos and BC included")
    ax.set_ylabel("validation success")
    ax.set_title("goto: A2C from scratch vs demos + BC + A2C")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--demos", type=int, default=2000, help="demonstrations per seed")
    parser.add_argument("--bc-updates", type=int, default=300, help="behaviour-cloning gradient steps")
    parser.add_argument("--finetune", nargs="*", default=["algo.lr=2e-4", "algo.ent_coef=0.001"],
                        help="overrides of the fine-tuning RL run (default: a gentler step than from scratch; with the "
                             "preset's lr 1e-3 and entropy 0.01 the first updates undo most of what BC learned)")
    parser.add_argument("--arms", nargs="+", default=["scratch", "synthetic"], help="which arms to run")
    parser.add_argument("--total-steps", type=int, default=None, help="cap on each RL run's env steps (smoke tests)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "synthetic.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.total_steps:
        RL.append(f"total_steps={args.total_steps}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mmrl-synthetic-") as tmp:
        for seed in args.seeds:
            if "scratch" in args.arms:
                rows.append(scratch(seed, Path(tmp)))
            if "synthetic" in args.arms:
                rows.append(synthetic(seed, Path(tmp), args.demos, args.bc_updates, args.finetune))
            print(seed, [r["wall_to_target"] for r in rows[-len(args.arms):]], flush=True)
    table = []
    for r in rows:
        table.append([r["arm"], r["seed"], r.get("demos_seconds", 0.0), r.get("bc_seconds", 0.0),
                      r.get("bc_validation", float("nan")), r["steps_to_target"], r["wall_to_target"] or float("nan"),
                      r["heldout"]])
    print_table(f"goto: wall time to {TARGET} validation success", ["arm", "seed", "demos s", "BC s", "BC validation",
                "RL steps to 0.9", "total wall s", "held-out"], table)
    reached = {arm: [r["wall_to_target"] for r in rows if r["arm"] == arm and r["wall_to_target"] is not None]
               for arm in ("scratch", "synthetic")}
    complete = set(args.arms) == {"scratch", "synthetic"} and all(len(t) == len(args.seeds) for t in reached.values())
    ratio = (sum(reached["synthetic"]) / sum(reached["scratch"])) if complete else None  # None: an arm missed 0.9
    print(f"synthetic / scratch mean wall time to {TARGET}: {ratio}")
    plot(rows, args.out.with_suffix(".png"))
    write_json(args.out, {"command": " ".join(sys.argv), "target": TARGET, "demos": args.demos,
                          "bc_updates": args.bc_updates, "finetune": args.finetune, "ratio": ratio, "runs": rows})


if __name__ == "__main__":
    main()
