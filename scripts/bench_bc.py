"""Behaviour cloning (algo=bc) from minigrid's BabyAI bot: demos needed for 99% on BabyAI levels.

Part 1 (`--part grbg`): BabyAI-GoToRedBallGrey-v0, `--grbg-demos` (10,000) bot demonstrations
(`mmrl demos data=gym ...`), `mmrl train algo=bc` on them, held-out success over
`--eval-episodes` env seeds no demo used. BabyAI 1.0 (Chevalier-Boisvert et al., 2019, table 3)
needs 8.4k-12.4k demos for 99% on this level (with an LSTM policy).

Part 2 (`--part curve`): BabyAI-GoToLocal-v0, one `mmrl demos` dataset of max(`--curve-demos`)
episodes; one BC run per count on its first `count` episodes (`algo.fraction`, so every count is a
prefix of the same dataset), held-out success per count (BabyAI 1.0: ~150k-190k demos for 99%).

Settings (both parts): `model=cnn-minigrid` (MiniGrid's SB3 CNN over the raw symbolic 7x7 view,
the mission as a bag of words, the direction one-hot), `data=gym` with its defaults (16 mission
tokens, symbolic image, a constant mission dropped: GoToRedBallGrey's "go to the red ball" is
constant, GoToLocal's varies), demos recorded with the same `data` settings. BC: Adam lr 1e-3
annealed linearly to 0, batch 256 transitions, entropy bonus `--ent-coef` (0.02), value loss 0.5.

Why sampled actions and an entropy bonus: the policy is memoryless (algo=bc refuses
`model.memory`: it learns from shuffled single transitions), while the bot explores with a
memory of where it has been. Where the target is out of view, an argmax policy can alternate
left/right forever (state S -> left -> S' -> right -> S) and the episode times out: argmax
success plateaus at ~0.95-0.96 on GoToRedBallGrey, however long it trains. Sampled actions
break those loops; a small entropy bonus keeps the policy from becoming so sure that they do
not. The headline is sampled held-out success (`eval.deterministic=false`); argmax held-out
success (`mmrl eval deterministic=true`) is reported next to it.

    python scripts/bench_bc.py                                   # both parts, defaults below
    python scripts/bench_bc.py --part grbg --grbg-demos 10000 --grbg-updates 3000
    python scripts/bench_bc.py --part curve --curve-demos 1000 5000 20000 50000 --curve-updates 3000 5000 8000 12000

Run under `nice -n 10` on a shared machine; `--jobs 2` trains two runs at a time (one torch
thread each). Writes docs/bench/bc.json and the learning curve docs/bench/bc_curve.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, print_table, write_json

GRBG = "BabyAI-GoToRedBallGrey-v0"
GOTOLOCAL = "BabyAI-GoToLocal-v0"
PAPER = {GRBG: "8.4k-12.4k demos for 99% (BabyAI 1.0)", GOTOLOCAL: "~150k-190k demos for 99% (BabyAI 1.0)"}
DATA = ["data=gym"]  # the data section: gym's defaults (mission_tokens 16, image auto, constant_mission drop)
MODEL = ["model=cnn-minigrid"]


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` (output to `log`); its wall time. Raises with the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed (rc {result.returncode}):\n{log.read_text()[-3000:]}")
    return wall


def shown(cmd: list[str]) -> str:
    """The command as a user types it (`mmrl ...` rather than `python -m mmrl_cli.cli ...`)."""
    return shlex.join(["mmrl", *cmd[3:]])


def mmrl(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmrl_cli.cli", *args]


def record_demos(env_id: str, episodes: int, root: Path) -> dict:
    """`mmrl demos` for `env_id` into <root>/demos/<env>-<episodes> (resumes / reuses a complete one)."""
    out = root / "demos" / f"{env_id}-{episodes}"
    cmd = mmrl("demos", *DATA, f"data.env_id={env_id}", f"episodes={episodes}", f"runs_root={root}", f"out={out}",
               "progress=false")
    wall = run(cmd, root / "logs" / f"demos-{env_id}-{episodes}.log")
    manifest = json.loads((out / "manifest.json").read_text())
    totals = manifest["totals"]
    return {"env": env_id, "dir": str(out), "command": shown(cmd), "episodes": totals["episodes"],
            "transitions": totals["transitions"], "expert_success_rate": totals["success_rate"],
            "mean_length": totals["mean_length"], "expert": manifest["expert"], "wall_seconds": wall,
            "episodes_per_second": totals["episodes"] / wall,
            "bytes": sum(s["bytes"] for s in manifest["shards"]),
            "shard_transitions": [[s["first_episode"], s["transitions"]] for s in manifest["shards"]]}


def train_bc(env_id: str, demos: dict, count: int, updates: int, episodes: int, args, root: Path, tag: str) -> dict:
    """`mmrl train algo=bc` on the first `count` demos (sampled-action held-out success), then
    `mmrl eval deterministic=true` of the same weights (argmax held-out success)."""
    runs_root = root / "runs" / tag
    runs_root.mkdir(parents=True, exist_ok=True)
    before = set(runs_root.glob("*/*"))
    fraction = count / demos["episodes"]
    cmd = mmrl("train", "algo=bc", *MODEL, *DATA, f"data.env_id={env_id}", f"algo.demos={demos['dir']}",
               f"algo.fraction={fraction:.10g}", f"algo.updates={updates}", f"algo.batch_size={args.batch_size}",
               f"algo.lr={args.lr}", "algo.lr_schedule=linear", f"algo.ent_coef={args.ent_coef}",
               f"algo.eval_every_updates={max(1, updates // 2)}", f"eval.episodes={episodes}",
               "eval.deterministic=false", f"seed={args.seed}", "hardware=cpu", f"hardware.threads={args.threads}",
               f"checkpoint.every_updates={updates}", f"runs_root={runs_root}", f"run_name={tag}",
               "monitor.progress=false", "monitor.tensorboard=false")
    wall = run(cmd, root / "logs" / f"train-{tag}.log")
    (run_dir,) = set(runs_root.glob("*/*")) - before
    s = json.loads((run_dir / "summary.json").read_text())
    eval_cmd = mmrl("eval", f"run={run_dir}", "deterministic=true", f"episodes={episodes}", "gif.episodes=0",
                    "hardware=cpu", f"hardware.threads={args.threads}")
    eval_wall = run(eval_cmd, root / "logs" / f"eval-argmax-{tag}.log")
    argmax = json.loads((run_dir / "eval" / "results.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = metrics[-1] if metrics else {}
    transitions = sum(t for first, t in demos["shard_transitions"] if first < count)  # exact when count is a
    # multiple of the shard size (1,000 episodes), else an upper bound
    return {"env": env_id, "demos": count, "fraction": fraction, "updates": s["updates"], "tag": tag,
            "command": shown(cmd), "argmax_eval_command": shown(eval_cmd), "run_dir": str(run_dir),
            "heldout_success_sampled": s["heldout_success_rate"], "heldout_success_sampled_ci95": s["heldout_success_ci95"],
            "heldout_return_sampled": s["heldout_return"],
            "heldout_success_argmax": argmax["success_rate"], "heldout_success_argmax_ci95": argmax.get("success_ci95"),
            "heldout_episodes": episodes,
            "validation_curve_sampled": [[e["updates"], e["validation"]["success_rate"]] for e in s["evaluations"]],
            "final_train_accuracy": last.get("accuracy"), "final_loss_bc": last.get("loss_bc"),
            "epochs": last.get("epoch"), "bc_wall_seconds": s["wall_seconds"], "bc_eval_seconds": s["eval_seconds"],
            "bc_train_seconds": s["wall_seconds"] - s["eval_seconds"], "process_wall_seconds": wall,
            "argmax_eval_wall_seconds": eval_wall, "transitions": transitions}


def part_grbg(args, root: Path) -> dict:
    demos = record_demos(GRBG, args.grbg_demos, root)
    r = train_bc(GRBG, demos, args.grbg_demos, args.grbg_updates, args.grbg_eval_episodes, args, root,
                 f"grbg-{args.grbg_demos}")
    ok = r["heldout_success_sampled"] >= 0.99
    print_table(f"BC on {GRBG}: {args.grbg_demos:,} bot demos, {args.grbg_updates:,} updates ({PAPER[GRBG]})",
                ["demos", "held-out success (sampled)", "95% CI", "held-out success (argmax)", "demos wall s",
                 "BC wall s (train + evals)", "BC train s"],
                [[args.grbg_demos, r["heldout_success_sampled"], "{:.3f}-{:.3f}".format(*r["heldout_success_sampled_ci95"]),
                  r["heldout_success_argmax"], demos["wall_seconds"], r["bc_wall_seconds"], r["bc_train_seconds"]]])
    return {"env": GRBG, "paper": PAPER[GRBG], "demos": demos, "run": r, "reaches_0.99_sampled": ok}


def curve_plan(args) -> tuple[list[int], list[int]]:
    counts = sorted(args.curve_demos)
    updates = args.curve_updates
    if updates is None:
        updates = [DEFAULT_CURVE_UPDATES.get(c) or default_updates(c) for c in counts]
    if len(updates) != len(counts):
        raise SystemExit("--curve-updates: one value per --curve-demos count")
    return counts, updates


def part_curve(args, root: Path, demos: dict | None = None) -> dict:
    counts, updates = curve_plan(args)
    demos = demos or record_demos(GOTOLOCAL, counts[-1], root)
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is a subprocess with its own torch thread(s)
        jobs = [pool.submit(train_bc, GOTOLOCAL, demos, c, u, args.curve_eval_episodes, args, root, f"gotolocal-{c}")
                for c, u in sorted(zip(counts, updates), key=lambda x: -x[1])]  # longest first
        results = sorted((j.result() for j in jobs), key=lambda r: r["demos"])
    rows = [[r["demos"], r["updates"], r["epochs"], r["heldout_success_sampled"],
             "{:.3f}-{:.3f}".format(*r["heldout_success_sampled_ci95"]), r["heldout_success_argmax"],
             r["final_train_accuracy"], r["bc_wall_seconds"]] for r in results]
    print_table(f"BC learning curve on {GOTOLOCAL} ({PAPER[GOTOLOCAL]}); demos: {demos['wall_seconds']:.0f} s for "
                f"{demos['episodes']:,}", ["demos", "updates", "epochs", "held-out success (sampled)", "95% CI",
                "held-out success (argmax)", "train accuracy", "BC wall s"], rows)
    return {"env": GOTOLOCAL, "paper": PAPER[GOTOLOCAL], "demos": demos, "runs": results}


# Gradient steps per count: enough epochs, not so many that small datasets overfit (5k demos:
# validation 0.72 after 2,000 updates, 0.64 after 4,000; 20k: 0.81 after 2,000, 0.85 after 4,000-6,000).
DEFAULT_CURVE_UPDATES = {1000: 1500, 5000: 2000, 20000: 6000, 50000: 10000, 100000: 15000}


def default_updates(count: int) -> int:
    """Gradient steps for `count` demos: ~40 epochs of ~5.3 transitions per episode at batch 256,
    within [3000, 15000]."""
    return int(min(15000, max(3000, math.ceil(40 * 5.3 * count / 256 / 500) * 500)))


def plot(curve: dict, grbg: dict | None, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no PNG")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    runs = curve["runs"]
    x = [r["demos"] for r in runs]
    for key, label, style in (("heldout_success_sampled", "sampled actions", "o-"),
                              ("heldout_success_argmax", "argmax actions", "s--")):
        y = [r[key] for r in runs]
        ci = [r.get(key + "_ci95") for r in runs]
        if all(ci):
            ax.errorbar(x, y, yerr=[[v - c[0] for v, c in zip(y, ci)], [c[1] - v for v, c in zip(y, ci)]], fmt=style,
                        capsize=3, label=f"{GOTOLOCAL}, {label}")
        else:
            ax.plot(x, y, style, label=f"{GOTOLOCAL}, {label}")
    if grbg:
        r = grbg["run"]
        ax.plot([r["demos"]], [r["heldout_success_sampled"]], "*", markersize=12, label=f"{GRBG}, sampled")
    ax.axhline(0.99, color="grey", lw=0.8, ls=":")
    ax.axvspan(150_000, 190_000, color="grey", alpha=0.15, label="BabyAI 1.0: GoToLocal 99% at 150k-190k")
    ax.set_xscale("log")
    ax.set_xlabel("bot demonstrations (episodes)")
    ax.set_ylabel("held-out success")
    ax.set_title("mmrl behaviour cloning (model=cnn-minigrid, memoryless)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def git_state() -> dict:
    def out(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"commit": out("rev-parse", "HEAD"), "dirty_files": len(out("status", "--porcelain").splitlines())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["grbg", "curve", "all"], default="all")
    parser.add_argument("--root", type=Path, default=Path("/tmp/mmrl-bench-bc"),
                        help="work directory: demos, runs, logs (demos are reused when complete)")
    parser.add_argument("--grbg-demos", type=int, default=10_000)
    parser.add_argument("--grbg-updates", type=int, default=3000)
    parser.add_argument("--curve-demos", type=int, nargs="+", default=[1000, 5000, 20000, 50000, 100000])
    parser.add_argument("--curve-updates", type=int, nargs="*", default=None,
                        help="one per count (default: DEFAULT_CURVE_UPDATES, else ~40 epochs within 3000-15000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ent-coef", type=float, default=0.02)
    parser.add_argument("--grbg-eval-episodes", type=int, default=2000, help="held-out (and validation) episodes")
    parser.add_argument("--curve-eval-episodes", type=int, default=500, help="held-out (and validation) episodes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="BC runs at a time (curve part)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/bc.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs/bench/bc_curve.png")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "git": git_state()}
    if args.out.exists():  # keep the other part's results when only one part is run
        old = json.loads(args.out.read_text())
        data.update({k: old[k] for k in ("grbg", "curve") if k in old})
    if args.part == "all":  # GoToRedBallGrey's BC run on one core while the GoToLocal demos are recorded on the other
        with ThreadPoolExecutor(2) as pool:
            grbg = pool.submit(part_grbg, args, args.root)
            curve_demos = pool.submit(record_demos, GOTOLOCAL, curve_plan(args)[0][-1], args.root)
            data["grbg"], curve_demos = grbg.result(), curve_demos.result()
        data["curve"] = part_curve(args, args.root, curve_demos)
    elif args.part == "grbg":
        data["grbg"] = part_grbg(args, args.root)
    else:
        data["curve"] = part_curve(args, args.root)
    data["total_wall_seconds"] = time.perf_counter() - start
    write_json(args.out, data)
    if "curve" in data and args.png:
        plot(data["curve"], data.get("grbg"), args.png)


if __name__ == "__main__":
    main()
