"""What `mmrl compare` writes: compare.json (every number, and each run's curve), compare.md (the
tables) and one PNG per figure (curves against env steps and against wall time with 95% bootstrap
bands, aggregate intervals, probability of improvement, performance profiles). Each file is
written atomically."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from ..checkpoint import write_text_atomic
from .records import RunRecord
from .settings import CompareConfig
from .stats import (AGGREGATES, aggregate_intervals, align, first_reaching, improvement_intervals, mean_band,
                    median_interval, profiles)

FIGURES = {"curves_steps.png": "validation {metric} against env steps (mean over runs, 95% bootstrap band)",
           "curves_wall.png": "validation {metric} against wall time (mean over runs, 95% bootstrap band)",
           "aggregates.png": "final {score} {metric}: IQM, mean, optimality gap (95% stratified bootstrap)",
           "improvement.png": "probability of improvement P(X > Y) on final {score} {metric} (95% interval)",
           "profiles.png": "performance profiles: fraction of runs scoring above tau (95% band)"}


def pick_metric(typed: CompareConfig, records: list[RunRecord]) -> str:
    """`metric`, or with `auto`: success where every run's env defines it, else return."""
    if typed.metric != "auto":
        return typed.metric
    defined = all(any(e["validation"].get("success_rate") is not None for e in r.evaluations) or
                  r.heldout.get("success_rate") is not None for r in records)
    return "success" if defined else "return"


def compare(typed: CompareConfig, records: list[RunRecord]) -> dict:
    """Every number of the comparison, from the runs alone."""
    rng = np.random.default_rng(typed.seed)
    metric = pick_metric(typed, records)
    target = typed.target if typed.target is not None else (0.9 if metric == "success" else None)
    groups = sorted({r.group for r in records})
    result = {"metric": metric, "target": target, "score": typed.score, "by": typed.by, "task": records[0].task,
              "reps": typed.reps, "seed": typed.seed, "groups": {}, "runs": [], "notes": []}
    scores: dict[str, np.ndarray] = {}
    for group in groups:
        members = [r for r in records if r.group == group]
        entry = {"runs": len(members), "curves": {}}
        curves = [r.curve(metric) for r in members]
        for axis, index in (("steps", 0), ("wall_seconds", 1)):
            grid, values = align([(c[index], c[2]) for c in curves], [r.reached_stop_at for r in members])
            mean, low, high = mean_band(values, typed.reps, rng)
            keep = ~np.isnan(mean)
            entry["curves"][axis] = {"x": grid[keep].tolist(), "mean": mean[keep].tolist(), "low": low[keep].tolist(),
                                     "high": high[keep].tolist()}
        if target is not None:
            steps_to = [first_reaching(c[0], c[2], target) for c in curves]
            wall_to = [first_reaching(c[1], c[2], target) for c in curves]
            entry["to_target"] = {"reached": sum(math.isfinite(s) for s in steps_to),
                                  "steps_median": median_interval(steps_to, typed.reps, rng),
                                  "wall_seconds_median": median_interval(wall_to, typed.reps, rng)}
        held = sum(r.reached_stop_at for r in members)
        if held:
            result["notes"].append(f"{group}: {held} run(s) ended at their eval.stop_at target; their curves hold "
                                   "the last value from there on")
        values = [r.score(metric, typed.score) for r in members]
        missing = [str(r.path) for r, v in zip(members, values) if not math.isfinite(v)]
        if missing:
            result["notes"].append(f"{group}: {len(missing)} run(s) without a {typed.score} {metric} (unfinished or "
                                   f"stopped early) left out of the aggregates: {', '.join(missing)}")
        scores[group] = np.array([[v] for v in values if math.isfinite(v)], dtype=float).reshape(-1, 1)
        entry["scored_runs"] = len(scores[group])
        result["groups"][group] = entry
        for record, curve, value in zip(members, curves, values):
            result["runs"].append({"path": str(record.path), "group": group, "finished": record.finished,
                                   "score": value if math.isfinite(value) else None,
                                   "curve": {"steps": curve[0], "wall_seconds": curve[1], metric: curve[2]}})
    gamma = 1.0 if metric == "success" else target
    for group, values in aggregate_intervals(scores, gamma, typed.reps, typed.seed).items():
        result["groups"][group]["aggregates"] = values
    result["improvement"] = improvement_intervals(scores, typed.reps, typed.seed)
    finite = np.concatenate([m.ravel() for m in scores.values()] or [np.zeros(0)])
    taus = np.linspace(0.0, 1.0, 51) if metric == "success" else \
        np.linspace(float(finite.min()), float(finite.max()), 51) if len(finite) else np.zeros(0)
    result["profiles"] = {"tau": taus.tolist(), "groups": profiles(scores, taus, typed.reps, typed.seed) if len(taus) else {}}
    return result


# ------------------------------------------------------------------------------ writing
def write_report(result: dict, directory: Path) -> list[Path]:
    """Write compare.json, compare.md and the PNGs into `directory`; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [write_figure(directory / name, draw, result) for name, draw in
               (("curves_steps.png", draw_curves("steps")), ("curves_wall.png", draw_curves("wall_seconds")),
                ("aggregates.png", draw_aggregates), ("improvement.png", draw_improvement),
                ("profiles.png", draw_profiles))]
    written = [p for p in written if p is not None]
    result["figures"] = [str(p) for p in written]
    write_text_atomic(directory / "compare.md", markdown(result))
    write_text_atomic(directory / "compare.json", json.dumps(result, indent=2, default=str))
    return [*written, directory / "compare.md", directory / "compare.json"]


def write_figure(path: Path, draw, result: dict) -> Path | None:
    """Draw one figure and save it atomically; None when the figure has nothing to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt, result)
    if fig is None:
        return None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def title(name: str, result: dict) -> str:
    """A figure's title: what it shows, on which env."""
    return f"{result['task']}: " + FIGURES[name].format(metric=result["metric"], score=result["score"])


def draw_curves(axis: str):
    """The learning-curve figure against `axis` (steps or wall_seconds)."""
    def draw(plt, result):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        shown = False
        for group, entry in result["groups"].items():
            curve = entry["curves"][axis]
            if not curve["x"]:
                continue
            shown = True
            line, = ax.plot(curve["x"], curve["mean"], label=f"{group} ({entry['runs']} runs)")
            ax.fill_between(curve["x"], curve["low"], curve["high"], color=line.get_color(), alpha=0.2)
        if not shown:
            plt.close(fig)
            return None
        if result["target"] is not None:
            ax.axhline(result["target"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("env steps" if axis == "steps" else "wall seconds")
        ax.set_ylabel(f"validation {result['metric']}")
        ax.set_title(title("curves_steps.png" if axis == "steps" else "curves_wall.png", result), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    return draw


def draw_aggregates(plt, result):
    """One panel per aggregate metric, one interval per group."""
    groups = [g for g, e in result["groups"].items() if e.get("scored_runs")]
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(AGGREGATES), figsize=(3 * len(AGGREGATES), 0.5 * len(groups) + 1.6), sharey=True)
    for ax, name in zip(axes, AGGREGATES):
        for y, group in enumerate(groups):
            point, low, high = result["groups"][group]["aggregates"][name]
            if math.isfinite(low):
                ax.plot([low, high], [y, y], linewidth=6, alpha=0.5, solid_capstyle="butt")
            ax.plot([point], [y], "k|", markersize=12)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(range(len(groups)), groups)
    fig.suptitle(title("aggregates.png", result), fontsize=9)
    fig.tight_layout()
    return fig


def draw_improvement(plt, result):
    """P(X > Y) with its interval, one row per pair of groups."""
    pairs = result["improvement"]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(pairs) + 1.4))
    for y, (pair, (point, low, high)) in enumerate(pairs.items()):
        ax.plot([low, high], [y, y], linewidth=6, alpha=0.5, solid_capstyle="butt")
        ax.plot([point], [y], "k|", markersize=12)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(pairs)), list(pairs))
    ax.set_xlim(0, 1)
    ax.set_title(title("improvement.png", result), fontsize=9)
    fig.tight_layout()
    return fig


def draw_profiles(plt, result):
    """Fraction of runs above each tau, per group, with bands."""
    groups = result["profiles"]["groups"]
    if not groups:
        return None
    taus = result["profiles"]["tau"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for group, (point, low, high) in groups.items():
        line, = ax.plot(taus, point, label=group)
        ax.fill_between(taus, low, high, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(f"final {result['score']} {result['metric']} (tau)")
    ax.set_ylabel("fraction of runs with score > tau")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title("profiles.png", result), fontsize=9)
    fig.tight_layout()
    return fig


def interval(values: list[float], digits: int = 3) -> str:
    """'point [low, high]' (or just the point without an interval; '-' for NaN, 'not reached' for inf)."""
    point, low, high = values
    if math.isinf(point):
        return "not reached"
    if not math.isfinite(point):
        return "-"
    fmt = (lambda v: f"{v:,.0f}") if abs(point) >= 1000 else (lambda v: f"{v:.{digits}f}")
    if not math.isfinite(low):
        return fmt(point)
    high_text = "inf" if math.isinf(high) else fmt(high)
    return f"{fmt(point)} [{fmt(low)}, {high_text}]"


def markdown(result: dict) -> str:
    """compare.md: the aggregate table, time to target, probability of improvement, figures, notes."""
    metric, score = result["metric"], result["score"]
    lines = [f"# mmrl compare: {result['task']}, grouped by {', '.join(result['by'])}", "",
             f"Final {score} {metric} per run; 95% stratified bootstrap intervals ({result['reps']} resamples, rliable).",
             "", f"| group | runs | {' | '.join(AGGREGATES)} |", "|" + "---|" * (len(AGGREGATES) + 2)]
    for group, entry in result["groups"].items():
        cells = [interval(entry["aggregates"][name]) for name in AGGREGATES]
        lines.append(f"| {group} | {entry['scored_runs']}/{entry['runs']} | {' | '.join(cells)} |")
    if result["target"] is not None:
        lines += ["", f"Time to validation {metric} >= {result['target']} (median over runs; a run that never gets there "
                  "counts as infinite):", "", "| group | reached | env steps | wall seconds |", "|---|---|---|---|"]
        for group, entry in result["groups"].items():
            to = entry["to_target"]
            lines.append(f"| {group} | {to['reached']}/{entry['runs']} | {interval(to['steps_median'], 0)} | "
                         f"{interval(to['wall_seconds_median'], 0)} |")
    if result["improvement"]:
        lines += ["", "Probability of improvement (P(X > Y) > 0.5: X tends to score higher):", "",
                  "| X > Y | P(X > Y) |", "|---|---|"]
        lines += [f"| {pair} | {interval(values)} |" for pair, values in result["improvement"].items()]
    lines += ["", "Figures:", ""] + [f"- `{Path(p).name}`" for p in result.get("figures", [])]
    if result["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in result["notes"]]
    lines += ["", "Runs:", ""] + [f"- `{r['path']}` ({r['group']})" for r in result["runs"]]
    return "\n".join(lines) + "\n"
