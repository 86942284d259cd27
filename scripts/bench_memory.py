"""Recurrent memory: a task a memoryless policy cannot solve, `model.memory=lstm` vs `none`.

The task (default): `exp=minigrid-memory`, i.e. `mmrl/MemoryCue-v0`, MiniGrid's Memory task with
the cue (a green key or ball) only in the first observation; at the end of the hallway the agent
must step next to the matching object. Without memory the split looks the same whichever the
cue was, so chance (0.5) is the ceiling. Each seed's pair (lstm, none) runs at the same time on
the two cores (one torch thread each), `mmrl train` as a user would run it; success is measured
on held-out env seeds with argmax actions (the run's final evaluation) and with sampled actions
(`mmrl eval deterministic=false`, which also checks that `mmrl eval` works on a memory run).
The floor: every lstm seed >= 0.9 held-out success, the memoryless mean within 0.15 of 0.5.

    python scripts/bench_memory.py [--seeds 1 2 3] [--steps N] [--out docs/bench/memory.json]
    python scripts/bench_memory.py --env MiniGrid-MemoryS7-v0 --seeds 1 --steps 500000 --out docs/bench/memory_s7.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _common import ROOT, mmrl_train, print_table, write_json

EVAL_EPISODES = 100
FLOOR, CHANCE, CHANCE_BAND = 0.9, 0.5, 0.15


def run(memory: str, seed: int, args, runs_root: Path) -> dict:
    """One `mmrl train exp=<exp> model.memory=<memory>` run and its held-out results."""
    overrides = [f"exp={args.exp}", f"model.memory={memory}", f"seed={seed}", "hardware.threads=1",
                 f"eval.episodes={EVAL_EPISODES}", *args.overrides]
    if args.steps:
        overrides.append(f"total_steps={args.steps}")
    if args.env:  # another env id: its own kwargs only (the preset's belong to mmrl/MemoryCue-v0)
        overrides += [f"data.env_id={args.env}", "~data.env_kwargs"]
    s = mmrl_train(overrides, runs_root / f"{memory}-seed{seed}")
    run_dir = Path(s["run_dir"])
    cmd = [sys.executable, "-m", "mmrl_cli.cli", "eval", f"run={run_dir}", "deterministic=false",
           f"episodes={EVAL_EPISODES}", "gif.episodes=0", "hardware.threads=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    sampled = json.loads((run_dir / "eval" / "results.json").read_text())
    first = next((e for e in s["evaluations"] if (e["validation"]["success_rate"] or 0) >= FLOOR), {})
    return {"memory": memory, "seed": seed, "heldout_success": s["heldout_success_rate"],
            "heldout_success_ci95": s["heldout_success_ci95"], "heldout_success_sampled": sampled["success_rate"],
            "heldout_return": s["heldout_return"], "first_step_validation_0.9": first.get("step"),
            "validation_curve": [[e["step"], e["validation"]["success_rate"]] for e in s["evaluations"]],
            "steps": s["steps"], "episodes": s["episodes"], "wall_seconds": s["wall_seconds"],
            "train_steps_per_second": s["train_steps_per_second"], "overrides": overrides, "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", default="minigrid-memory", help="the preset (conf/exp/)")
    parser.add_argument("--env", default=None, help="another env id, e.g. MiniGrid-MemoryS7-v0 (default: the preset's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help="total_steps (default: the preset's)")
    parser.add_argument("--memories", nargs="+", default=["lstm", "none"])
    parser.add_argument("--overrides", nargs="*", default=[], help="extra mmrl train overrides")
    parser.add_argument("--runs-root", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "memory.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs_root = args.runs_root or Path(tmp)
        with ProcessPoolExecutor(2) as pool:  # each seed's pair side by side, one core each
            jobs = [pool.submit(run, memory, seed, args, runs_root) for seed in args.seeds for memory in args.memories]
            results = [job.result() for job in jobs]

    rows, summary = [], {}
    for r in results:
        rows.append([r["memory"], r["seed"], r["heldout_success"], r["heldout_success_sampled"],
                     r["first_step_validation_0.9"] or "never", r["steps"], r["wall_seconds"], r["train_steps_per_second"]])
    for memory in args.memories:
        runs = [r for r in results if r["memory"] == memory]
        successes = [r["heldout_success"] for r in runs]
        summary[memory] = {"heldout_success_mean": statistics.fmean(successes), "heldout_success_min": min(successes),
                           "heldout_success_sampled_mean": statistics.fmean(r["heldout_success_sampled"] for r in runs),
                           "train_steps_per_second_mean": statistics.fmean(r["train_steps_per_second"] for r in runs)}
        rows.append([f"{memory} mean", "", summary[memory]["heldout_success_mean"],
                     summary[memory]["heldout_success_sampled_mean"], "", "", "", summary[memory]["train_steps_per_second_mean"]])
    checks = {}
    if "lstm" in summary:
        checks["lstm_every_seed_at_least_0.9"] = summary["lstm"]["heldout_success_min"] >= FLOOR
    if "none" in summary:
        checks["none_near_chance"] = abs(summary["none"]["heldout_success_mean"] - CHANCE) <= CHANCE_BAND
    env = args.env or "the preset's env"
    print_table(f"exp={args.exp} on {env}: model.memory lstm vs none, held-out success ({EVAL_EPISODES} episodes)",
                ["memory", "seed", "success (argmax)", "success (sampled)", "first step validation >= 0.9", "steps",
                 "wall s", "steps/s (training)"], rows)
    print("checks:", ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    write_json(args.out, {"exp": args.exp, "env": args.env, "seeds": args.seeds, "steps": args.steps,
                          "overrides": args.overrides, "eval_episodes": EVAL_EPISODES, "checks": checks,
                          "summary": summary, "results": results})


if __name__ == "__main__":
    main()
