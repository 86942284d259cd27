"""What a finished sweep leaves behind: the best configurations retrained with fresh seeds and
measured on held-out levels, the best one exported as an `exp` preset, plots, TensorBoard
hparams, `results.json` and `report.md`.

Selection never looks at held-out levels: trials are ranked by their validation objective, the
retrained configurations by their mean validation score over fresh seeds; held-out success and
return (with 95% intervals) are only reported.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import FrozenTrial, TrialState

from ..checkpoint import write_text_atomic
from ..compose import compose_train_config
from ..config import TrainConfig
from .settings import SweepConfig
from .study import steps_spent

# Sections of a trial's config that make up the exported preset (not the machine, paths or seed).
PRESET_SECTIONS = ("algo", "model", "data", "compression", "total_steps", "rollout", "eval", "numerics")
GROUPS_IN_PRESET = ("algo", "model", "data", "compression")


def ranked_trials(study: optuna.Study, config: SweepConfig) -> list[FrozenTrial]:
    """Complete trials, best first: by the objective, or the Pareto front first (multi-objective)."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    by_metric = sorted(complete, key=lambda t: -t.values[0])
    if len(config.hpo.directions) == 1:
        return by_metric
    front = {t.number for t in study.best_trials}
    return [t for t in by_metric if t.number in front] + [t for t in by_metric if t.number not in front]


# --------------------------------------------------------------------------- retrain
def retrain_one(overrides: list[str], run_dir: str) -> dict:
    """Train one configuration to the end in `run_dir` (resuming a run cut short); its summary."""
    from ..checkpoint import find_checkpoint
    from ..trainer import train

    path = Path(run_dir)
    if (path / "summary.json").exists():
        summary = json.loads((path / "summary.json").read_text())
        if summary.get("stopped_by") is None:
            return summary
    resume = None
    if (path / "checkpoints").is_dir():
        try:
            resume, _ = find_checkpoint(path)
        except Exception:  # nothing intact: start again
            shutil.rmtree(path)
    cfg = compose_train_config(overrides + ["monitor.progress=false"])
    return train(cfg, path, resume_from=resume)


def t_interval(values: list[float]) -> list[float]:
    """95% t-interval of the mean of per-seed values ([mean, mean] for one seed)."""
    from scipy import stats

    mean = sum(values) / len(values)
    if len(values) < 2:
        return [mean, mean]
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    return [mean - half, mean + half]


def retrain(trials: list[FrozenTrial], config: SweepConfig, sweep_dir: Path) -> list[dict]:
    """Retrain each trial's configuration with `hpo.retrain.seeds` fresh seeds; per-configuration results."""
    from rich.progress import Progress

    hpo = config.hpo
    jobs = []
    for rank, trial in enumerate(trials):
        base = [o for o in trial.user_attrs["overrides"] if not o.startswith(("seed=", "runs_root="))]
        for k in range(hpo.retrain.seeds):
            seed = hpo.retrain.first_seed + k
            run_dir = sweep_dir / "retrain" / f"rank{rank + 1}-trial{trial.number:04d}" / f"seed{seed}"
            jobs.append((rank, trial, seed, base + [f"seed={seed}", f"runs_root={config.runs_root}"], run_dir))
    summaries: dict[tuple[int, int], dict] = {}
    with Progress() as progress:
        task = progress.add_task(f"retraining the top {len(trials)} with {hpo.retrain.seeds} fresh seeds", total=len(jobs))
        if hpo.n_workers == 1:  # in this process, one after the other
            for rank, _, seed, overrides, run_dir in jobs:
                summaries[(rank, seed)] = retrain_one(overrides, str(run_dir))
                progress.advance(task)
        else:  # as many at a time as the sweep has workers
            with ProcessPoolExecutor(hpo.n_workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(retrain_one, overrides, str(run_dir)): (rank, seed)
                           for rank, _, seed, overrides, run_dir in jobs}
                for future in futures:
                    summaries[futures[future]] = future.result()
                    progress.advance(task)
    results = []
    for rank, trial in enumerate(trials):
        runs = [summaries[(rank, hpo.retrain.first_seed + k)] for k in range(hpo.retrain.seeds)]
        results.append(config_result(rank, trial, runs, hpo.objective.metric))
    return results


def config_result(rank: int, trial: FrozenTrial, runs: list[dict], metric: str) -> dict:
    """One retrained configuration: validation (selection) and held-out (report) figures over seeds."""
    key = "validation_success_rate" if metric == "validation_success" else "validation_return"
    validation = [r[key] for r in runs]
    returns = [r["heldout_return"] for r in runs]
    result = {
        "rank_in_sweep": rank + 1, "trial": trial.number, "params": trial.params, "sweep_value": trial.values[0],
        "seeds": len(runs), "run_dirs": [r["run_dir"] for r in runs],
        "validation_mean": sum(validation) / len(validation),
        "heldout_return_mean": sum(returns) / len(returns), "heldout_return_ci95_over_seeds": t_interval(returns),
        "overrides": [o for o in trial.user_attrs["overrides"] if not o.startswith(("seed=", "runs_root="))],
    }
    rates = [r["heldout_success_rate"] for r in runs]
    if all(rate is not None for rate in rates):
        result["heldout_success_mean"] = sum(rates) / len(rates)
        low, high = t_interval(rates)
        result["heldout_success_ci95_over_seeds"] = [max(0.0, low), min(1.0, high)]
        result["heldout_success_per_seed"] = [{"rate": r["heldout_success_rate"], "wilson_ci95": r["heldout_success_ci95"]}
                                              for r in runs]
    return result


# ---------------------------------------------------------------------------- export
def preset_name(config: SweepConfig) -> str:
    """The `exp` option name of a study's exported best configuration."""
    return f"{config.hpo.study_name}-best"


def preset_yaml(cfg: TrainConfig, study_name: str, result: dict) -> str:
    """The best configuration as a self-contained `exp` preset (every key of the sections it sets)."""
    full = OmegaConf.to_container(OmegaConf.structured(cfg))
    values = {key: full[key] for key in PRESET_SECTIONS}
    header = [
        "# @package _global_",
        f"# Written by `mmrl sweep` (study {study_name}): trial {result['trial']}, the best of the retrained top",
        f"# configurations by mean validation score over {result['seeds']} fresh seeds"
        + (f"; held-out success {result['heldout_success_mean']:.3f}" if "heldout_success_mean" in result else "") + ".",
        f"# Usage: mmrl train exp={study_name}-best",
        "defaults:",
        *[f"  - override /{group}: {full[group]['type']}" for group in GROUPS_IN_PRESET],
    ]
    return "\n".join(header) + "\n" + OmegaConf.to_yaml(OmegaConf.create(values))


def export_preset(result: dict, config: SweepConfig, sweep_dir: Path) -> Path:
    """Write `<sweep>/exp/<study_name>-best.yaml`; `mmrl train exp=<study_name>-best` finds it
    (cli.sweep_preset_searchpath)."""
    cfg = compose_train_config(result["overrides"])
    path = sweep_dir / "exp" / f"{preset_name(config)}.yaml"
    path.parent.mkdir(exist_ok=True)
    write_text_atomic(path, preset_yaml(cfg, config.hpo.study_name, result))
    return path


# ----------------------------------------------------------------------------- plots
def write_plots(study: optuna.Study, config: SweepConfig, sweep_dir: Path) -> list[str]:
    """Optimisation history, parameter importances and parallel coordinates as PNG (HTML with hpo.html)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as mpl_plots

    out = sweep_dir / "plots"
    out.mkdir(exist_ok=True)
    target = (lambda t: t.values[0]) if len(config.hpo.directions) > 1 else None
    name = config.hpo.objective.metric
    plots = {"optimization_history": mpl_plots.plot_optimization_history,
             "param_importances": mpl_plots.plot_param_importances,
             "parallel_coordinate": mpl_plots.plot_parallel_coordinate}
    if len(config.hpo.directions) > 1:
        plots["pareto_front"] = mpl_plots.plot_pareto_front
    written = []
    for plot_name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                kwargs = {"target_names": [name, config.hpo.objective.second]} if plot_name == "pareto_front" \
                    else {"target": target, "target_name": name}
                axes = plot(study, **kwargs)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(10, 6)
            figure.tight_layout()
            figure.savefig(out / f"{plot_name}.png", dpi=100)
            plt.close(figure)
            written.append(f"plots/{plot_name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances need two complete trials
            continue
        if config.hpo.html:
            from optuna import visualization

            getattr(visualization, f"plot_{plot_name}")(study, **kwargs).write_html(str(out / f"{plot_name}.html"))
    return written


def write_hparams(study: optuna.Study, config: SweepConfig, sweep_dir: Path) -> None:
    """TensorBoard hparams: one entry per finished trial, under <sweep>/tb/ (rewritten each time)."""
    from torch.utils.tensorboard import SummaryWriter

    root = sweep_dir / "tb"
    shutil.rmtree(root, ignore_errors=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        params = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in t.params.items()}
        if t.values:
            value = t.values[0]
        else:  # pruned: its last reported validation score
            value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else math.nan
        with SummaryWriter(str(root / f"trial-{t.number:04d}")) as writer:
            writer.add_hparams(params, {f"hparam/{config.hpo.objective.metric}": value,
                                        "hparam/env_steps": float(t.user_attrs.get("steps", 0))}, run_name=".")


# ---------------------------------------------------------------------------- report
def trial_rows(study: optuna.Study) -> list[dict]:
    """Every trial as plain data for results.json."""
    return [{"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
             "steps": int(t.user_attrs.get("steps", 0)), "pruned_at_step": t.user_attrs.get("pruned_at_step"),
             "failed_because": t.user_attrs.get("failed_because"), "retry_of": t.user_attrs.get("retry_of"),
             "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None,
             "run_dir": t.user_attrs.get("run_dir"), "seeds": t.user_attrs.get("seeds"),
             "seed_values": t.user_attrs.get("seed_values")} for t in study.get_trials(deepcopy=False)]


def report_markdown(results: dict) -> str:
    """report.md: the study, the best trials, the retrained configurations, the files."""
    lines = [f"# mmrl sweep: {results['study_name']}", "",
             f"- objective: {objectives_line(results)}",
             f"- trials: {results['counts']}", f"- env steps spent: {results['steps_spent']:,}", ""]
    if results["retrained"]:
        lines += ["## Retrained with fresh seeds (held-out levels)", "",
                  "| rank | trial | validation (mean) | held-out success (95% CI over seeds) | held-out return | params |",
                  "|---|---|---|---|---|---|"]
        for r in results["retrained"]:
            success = (f"{r['heldout_success_mean']:.3f} ({r['heldout_success_ci95_over_seeds'][0]:.3f} to "
                       f"{r['heldout_success_ci95_over_seeds'][1]:.3f})") if "heldout_success_mean" in r else "n/a"
            params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
            lines.append(f"| {r['rank_in_sweep']} | {r['trial']} | {r['validation_mean']:.3f} | {success} | "
                         f"{r['heldout_return_mean']:.3f} | {params} |")
        lines += ["", f"Best: trial {results['best']['trial']}, exported to `{results['preset']}` "
                      f"(`mmrl train exp={results['preset_name']}`).", ""]
    lines += ["## Trials", "", "| trial | state | value | steps | params |", "|---|---|---|---|---|"]
    for t in results["trials"]:
        value = ", ".join(f"{v:.4g}" for v in t["values"]) if t["values"] else ""
        if t.get("seed_values"):  # several seeds: each one's values after the combined ones
            value += " (" + "; ".join(", ".join(f"{v:.4g}" for v in seed) for seed in t["seed_values"]) + ")"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(f"| {t['number']} | {t['state'].lower()} | {value} | {t['steps']:,} | {params} |")
    lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in results["plots"]), ""]
    return "\n".join(lines)


def objectives_line(results: dict) -> str:
    """``validation_success (maximize) on validation levels``, the second objective with its own
    direction when the study has two, and how each trial's seeds were combined when it has several."""
    names = [results["objective"], *([results["second_objective"]] if results.get("second_objective") else [])]
    parts = [f"{name} ({direction})" for name, direction in zip(names, results["directions"])]
    seeds = results.get("seeds_per_trial", 1)
    over = f"; each trial's {results['aggregate']} of its {seeds} seeds" if seeds > 1 else ""
    return f"{parts[0]} on validation levels" + "".join(f", {part}" for part in parts[1:]) + over


def finish(study: optuna.Study, config: SweepConfig, sweep_dir: Path) -> dict:
    """Retrain the top-k, export the best, write plots, hparams, results.json and report.md."""
    hpo = config.hpo
    trials = study.get_trials(deepcopy=False)
    ranked = ranked_trials(study, config)
    retrained = retrain(ranked[:hpo.retrain.top_k], config, sweep_dir) if ranked and hpo.retrain.top_k else []
    best = max(retrained, key=lambda r: r["validation_mean"]) if retrained else None
    preset = str(export_preset(best, config, sweep_dir)) if best else None
    results = {
        "study_name": hpo.study_name, "sweep_dir": str(sweep_dir), "objective": hpo.objective.metric,
        "second_objective": hpo.objective.second, "directions": hpo.directions, "sampler": hpo.sampler.type,
        "seeds_per_trial": hpo.objective.seeds, "aggregate": hpo.objective.aggregate,
        "pruner": hpo.pruner.type,
        "counts": {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState if any(t.state == s for t in trials)},
        "steps_spent": steps_spent(trials),
        "best_trial": {"number": ranked[0].number, "values": ranked[0].values, "params": ranked[0].params} if ranked else None,
        "retrained": retrained, "best": best, "preset": preset, "preset_name": preset_name(config) if preset else None,
        "plots": write_plots(study, config, sweep_dir) if trials else [],
        "trials": trial_rows(study),
    }
    write_hparams(study, config, sweep_dir)
    write_text_atomic(sweep_dir / "results.json", json.dumps(results, indent=2, default=str))
    write_text_atomic(sweep_dir / "report.md", report_markdown(results))
    return results
