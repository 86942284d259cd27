"""`mmrl sweep` benchmarks: Bayesian samplers vs random search, pruning on vs off, 1 vs 2 workers.

All on CartPole-v1 PPO with the search space of `hpo=cartpole-ppo` (7 keys), trials shorter than
the preset's so that hundreds of them fit in minutes:

1. samplers: TPE, GP and random, each in `--repeats` sweeps with sampler seeds 0, 1, ...,
   `--trials` trials of `--sampler-steps` env steps each (no pruning); the number of trials each
   sweep needed until a trial's validation return reached `--target` (or "not reached"). Both
   model-based samplers start after 5 random trials. Two sweeps run at a time, one thread each.
2. pruning: the same TPE sweep (sampler seed 0, `--trials` trials of `--prune-steps` steps,
   validation every fifth of that) with the median pruner and without; env steps spent, and the
   best trial's configuration retrained with 3 fresh seeds and evaluated on held-out env seeds.
3. workers: `mmrl sweep` through the CLI with 1 and then 2 worker processes (one thread each) on
   the same fixed budget of `--worker-trials` trials; wall time, and that no trial ran twice.

    python scripts/bench_sweep.py [--parts samplers pruning workers] [--out docs/bench/sweep.json]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from _common import ROOT, print_table, write_json

EVAL_EPISODES = 32


def preset_space() -> dict:
    """The search space `hpo=cartpole-ppo` ships with."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "hpo" / "cartpole-ppo.yaml"))["space"]


def run_study(name: str, sampler: str, seed: int, trials: int, steps: int, pruner: str, evals: int, root: str,
              min_resource: int | None = None) -> dict:
    """One sweep in this process (no worker processes): every trial's value, steps and seconds."""
    import torch
    from optuna.trial import TrialState

    from mmrl_cli.sweep.settings import BudgetConfig, HpoConfig, PrunerConfig, SamplerConfig, SweepConfig, parse_space
    from mmrl_cli.sweep.study import open_study
    from mmrl_cli.sweep.trial import run_trial

    torch.set_num_threads(1)
    train = ["exp=cartpole-ppo", f"total_steps={steps}", f"eval.every_steps={steps // evals}",
             f"eval.episodes={EVAL_EPISODES}", "monitor.tensorboard=false", "monitor.progress=false",
             "checkpoint.every_updates=1000", "hardware.threads=1"]
    hpo = HpoConfig(study_name=name, train=train, space=preset_space(),
                    sampler=SamplerConfig(type=sampler, seed=seed, n_startup_trials=5),
                    pruner=PrunerConfig(type=pruner, n_startup_trials=5, warmup_steps=steps // evals,
                                        min_resource=min_resource),
                    budget=BudgetConfig(trials=trials))
    hpo.objective.metric = "validation_return"
    config = SweepConfig(hpo=hpo, runs_root=root, sweep_dir=f"{root}/{name}")
    sweep_dir = Path(config.directory)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(hpo, sweep_dir)
    params = parse_space(hpo.space)
    start = time.perf_counter()
    for _ in range(trials):
        run_trial(study, config, params, sweep_dir)
    seconds = time.perf_counter() - start
    rows = study.get_trials()
    return {"name": name, "sampler": sampler, "seed": seed, "pruner": pruner, "seconds": seconds,
            "values": [t.values[0] if t.state == TrialState.COMPLETE else None for t in rows],
            "states": [t.state.name for t in rows], "steps": [int(t.user_attrs.get("steps", 0)) for t in rows],
            "params": [t.params for t in rows], "overrides": [t.user_attrs.get("overrides") for t in rows]}


def trials_to_target(values: list, target: float) -> int | None:
    """1-based index of the first trial whose value reached `target`, None if none did."""
    return next((i + 1 for i, v in enumerate(values) if v is not None and v >= target), None)


def part_samplers(args, root: str) -> dict:
    jobs = [(f"{s}-{seed}", s, seed) for seed in range(args.repeats) for s in ("tpe", "gp", "random")]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_study, name, s, seed, args.trials, args.sampler_steps, "none", 1, root)
                   for name, s, seed in jobs]
        studies = [f.result() for f in futures]
    rows, summary = [], {}
    for sampler in ("tpe", "gp", "random"):
        mine = [s for s in studies if s["sampler"] == sampler]
        needed = [trials_to_target(s["values"], args.target) for s in mine]
        as_numbers = [n if n is not None else args.trials + 1 for n in needed]  # not reached: budget + 1
        best = [max(v for v in s["values"] if v is not None) for s in mine]
        summary[sampler] = {"trials_to_target": needed, "median_trials_to_target": statistics.median(as_numbers),
                            "reached": sum(n is not None for n in needed), "best_values": best,
                            "seconds": [s["seconds"] for s in mine]}
        rows.append([sampler, " ".join(str(n) if n else "-" for n in needed), statistics.median(as_numbers),
                     f"{summary[sampler]['reached']}/{len(mine)}", statistics.median(best)])
    print_table(f"samplers: trials until validation return >= {args.target} ({args.trials} trials of "
                f"{args.sampler_steps:,} steps, {args.repeats} sweeps each; '-' = not reached, counted as "
                f"{args.trials + 1})", ["sampler", "trials needed per sweep", "median", "reached", "median best return"], rows)
    return {"target": args.target, "trials": args.trials, "steps_per_trial": args.sampler_steps,
            "repeats": args.repeats, "summary": summary, "studies": studies}


def retrain_heldout(overrides: list[str], seeds: list[int], root: str) -> list[float]:
    """Held-out mean return of one configuration retrained with fresh seeds."""
    from mmrl_cli.sweep.report import retrain_one

    base = [o for o in overrides if not o.startswith(("seed=", "runs_root="))]
    base = [o for o in base if not o.startswith("eval.every_steps=")]
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(retrain_one, base + [f"seed={seed}", f"runs_root={root}"], f"{root}/retrain-{abs(hash(tuple(base)))}-{seed}")
                   for seed in seeds]
        return [f.result()["heldout_return"] for f in futures]


PRUNERS = ("none", "median", "sha", "hyperband")


def part_pruning(args, root: str) -> dict:
    first_rung = args.prune_steps // 5  # sha / hyperband: the first rung is the first validation evaluation
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        futures = {pruner: pool.submit(run_study, f"prune-{pruner}", "tpe", 0, args.trials, args.prune_steps, pruner, 5, root,
                                       first_rung)
                   for pruner in PRUNERS}
        studies = {pruner: f.result() for pruner, f in futures.items()}
    results, rows = {}, []
    for pruner, study in studies.items():
        complete = [(v, i) for i, v in enumerate(study["values"]) if v is not None]
        best_value, best_index = max(complete)
        heldout = retrain_heldout(study["overrides"][best_index], [10_000, 10_001, 10_002], root)
        steps = sum(study["steps"])
        results[pruner] = {"env_steps": steps, "seconds": study["seconds"], "pruned": study["states"].count("PRUNED"),
                           "best_trial": best_index, "best_validation": best_value, "retrained_heldout_returns": heldout,
                           "study": study}
        rows.append([pruner, steps, study["states"].count("PRUNED"), study["seconds"], best_value,
                     statistics.mean(heldout), " ".join(f"{h:.0f}" for h in heldout)])
    results["step_saving"] = {p: 1 - results[p]["env_steps"] / results["none"]["env_steps"] for p in PRUNERS[1:]}
    for row, pruner in zip(rows, PRUNERS):
        row.insert(2, f"{results['step_saving'].get(pruner, 0.0):.0%}")
    print_table(f"pruning: TPE, {args.trials} trials of {args.prune_steps:,} steps, 5 validation evaluations each",
                ["pruner", "env steps", "saved", "pruned", "seconds", "best validation", "held-out (3 fresh seeds)",
                 "per seed"], rows)
    return results


def part_workers(args, root: str) -> dict:
    results, rows = {}, []
    train = ["exp=cartpole-ppo", f"total_steps={args.prune_steps}", f"eval.every_steps={args.prune_steps}",
             f"eval.episodes={EVAL_EPISODES}", "monitor.tensorboard=false", "hardware.threads=1"]
    for workers in (1, 2):
        name = f"workers-{workers}"
        cmd = [sys.executable, "-m", "mmrl_cli.cli", "sweep", "hpo=cartpole-ppo", f"hpo.study_name={name}",
               "hpo.train=[" + ",".join(f"'{o}'" for o in train) + "]", f"hpo.budget.trials={args.worker_trials}", "hpo.pruner.type=none",
               f"hpo.n_workers={workers}", "hpo.storage=journal", "hpo.retrain.top_k=0", f"runs_root={root}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        import json

        report = json.loads((Path(root) / "sweeps" / name / "results.json").read_text())
        numbers = [t["number"] for t in report["trials"]]
        results[workers] = {"seconds": seconds, "trials": len(numbers), "distinct_trials": len(set(numbers)),
                            "counts": report["counts"]}
        rows.append([workers, seconds, len(numbers), report["counts"]])
    results["speedup"] = results[1]["seconds"] / results[2]["seconds"]
    print_table(f"workers: {args.worker_trials} trials of {args.prune_steps:,} steps through `mmrl sweep` "
                f"(2 workers: {results['speedup']:.2f}x faster)", ["workers", "wall seconds", "trials", "states"], rows)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["samplers", "pruning", "workers"])
    parser.add_argument("--trials", type=int, default=30, help="trials per sweep (samplers, pruning)")
    parser.add_argument("--repeats", type=int, default=5, help="sweeps per sampler (sampler seeds 0, 1, ...)")
    parser.add_argument("--sampler-steps", type=int, default=8_000, help="env steps per trial (samplers)")
    parser.add_argument("--target", type=float, default=475.0, help="validation return a sampler must reach")
    parser.add_argument("--prune-steps", type=int, default=40_000, help="env steps per trial (pruning, workers)")
    parser.add_argument("--worker-trials", type=int, default=8, help="trial budget (workers)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/bench/sweep.json")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="mmrl-bench-sweep-")
    data = {"args": {k: v for k, v in vars(args).items() if k != "out"}}
    if args.out.exists():  # keep the parts not re-run this time
        import json

        data = {**{k: v for k, v in json.loads(args.out.read_text()).items() if k != "machine"}, **data}
    for part in args.parts:
        data[part] = {"samplers": part_samplers, "pruning": part_pruning, "workers": part_workers}[part](args, root)
    write_json(args.out, data)


if __name__ == "__main__":
    main()
