"""The statistics of `mmrl compare`: curves aligned on one grid with bootstrap bands, rliable's
aggregate metrics with stratified bootstrap intervals, and steps and wall time to a target.

Curves: each run's validation curve is interpolated linearly onto the union of its group's
evaluation points, only inside the run's own range (no extrapolation), except that a run which
ended at its target (`eval.stop_at`: done, not cut short) holds its last value to the end of the
grid; a group's curve is the mean over its runs where every run has a value, with a 95%
percentile bootstrap band over runs.
Aggregates (Agarwal et al. 2021): IQM, mean and optimality gap of the runs' final scores,
probability of improvement between groups, and performance profiles: points from `rliable.metrics`,
95% intervals from a vectorised stratified bootstrap that resamples as rliable's does (a test checks
them against `rliable.library` called directly).
"""

from __future__ import annotations

import math

import numpy as np

NAN = float("nan")
# rliable's median is the median over tasks of each task's mean score: with one env per comparison
# it equals the mean, so it is not reported.
AGGREGATES = ("IQM", "mean", "optimality gap")


def align(curves: list[tuple[list[float], list[float]]], hold: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values): the union of the curves' x positions, and each curve interpolated onto it
    (a runs x grid matrix, NaN outside a curve's own first..last x; after its last x, a curve with
    `hold[i]` keeps its last value)."""
    grid = np.unique(np.concatenate([np.asarray(x, dtype=float) for x, _ in curves if len(x)] or [np.zeros(0)]))
    values = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        if not len(x):
            continue
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        inside = (grid >= x[0]) & (grid <= x[-1])
        values[i, inside] = np.interp(grid[inside], x, y)
        if hold is not None and hold[i]:
            values[i, grid > x[-1]] = y[-1]
    return grid, values


def mean_band(values: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs and its 95% percentile bootstrap band (runs resampled with replacement), at
    each grid point where every run has a value (NaN elsewhere)."""
    n, points = values.shape
    mean = np.full(points, np.nan)
    low, high = mean.copy(), mean.copy()
    complete = ~np.isnan(values).any(axis=0) if n else np.zeros(points, bool)
    if not complete.any():
        return mean, low, high
    covered = values[:, complete]
    mean[complete] = covered.mean(axis=0)
    samples = covered[rng.integers(0, n, size=(reps, n))].mean(axis=1)  # reps x points
    low[complete], high[complete] = np.percentile(samples, [2.5, 97.5], axis=0)
    return mean, low, high


def first_reaching(x: list[float], y: list[float], target: float) -> float:
    """x of the first evaluation at or above `target` (inf if the curve never gets there)."""
    return next((float(a) for a, b in zip(x, y) if b >= target), math.inf)


def median_interval(values: list[float], reps: int, rng: np.random.Generator) -> list[float]:
    """Median of `values` (inf counts: a run that never reached the target) and its 95% bootstrap interval."""
    data = np.asarray(values, dtype=float)
    if not len(data):
        return [NAN, NAN, NAN]
    samples = np.median(data[rng.integers(0, len(data), size=(reps, len(data)))], axis=1)
    low, high = np.quantile(samples, [0.025, 0.975], method="inverted_cdf")  # no interpolation: inf stays inf
    return [float(np.median(data)), float(low), float(high)]


def stratified_samples(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """`reps` stratified bootstrap resamples of a runs x tasks matrix: each task's runs drawn with
    replacement from that task's own runs (rliable's `StratifiedBootstrap`), reps x runs x tasks."""
    runs, tasks = scores.shape
    rows = rng.integers(0, runs, size=(reps, runs, tasks))
    return scores[rows, np.arange(tasks)]


def aggregates_of(samples: np.ndarray, gamma: float | None) -> np.ndarray:
    """IQM, mean, optimality gap of each resample (... x runs x tasks -> ... x 3), computed as rliable's
    metrics do: IQM and optimality gap over all runs and tasks together, the mean of task means."""
    import scipy.stats

    flat = samples.reshape(*samples.shape[:-2], -1)
    gap = gamma - np.minimum(flat, gamma).mean(axis=-1) if gamma is not None else np.full(flat.shape[:-1], np.nan)
    return np.stack([scipy.stats.trim_mean(flat, 0.25, axis=-1), samples.mean(axis=-2).mean(axis=-1), gap], axis=-1)


def percentile_interval(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of bootstrap estimates (along the first axis)."""
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return low, high


def aggregate_intervals(scores: dict[str, np.ndarray], gamma: float | None, reps: int, seed: int) -> dict:
    """{group: {aggregate: [point, low, high]}}: the point from rliable's metrics, the 95% interval
    from a stratified bootstrap over runs (vectorised; rliable's `get_interval_estimates` gives the
    same interval up to resampling noise, and takes ~1 ms per resample where this takes ~1 us).
    `scores[group]` is a runs x tasks matrix; one run gives a point without an interval."""
    from rliable import metrics

    out = {}
    for number, (group, matrix) in enumerate(scores.items()):
        if not len(matrix):
            out[group] = {name: [NAN, NAN, NAN] for name in AGGREGATES}
            continue
        gap = float(metrics.aggregate_optimality_gap(matrix, gamma)) if gamma is not None else NAN
        points = [float(metrics.aggregate_iqm(matrix)), float(metrics.aggregate_mean(matrix)), gap]
        if len(matrix) < 2:
            out[group] = {name: [p, NAN, NAN] for name, p in zip(AGGREGATES, points)}
            continue
        rng = np.random.default_rng([seed, number])
        low, high = percentile_interval(aggregates_of(stratified_samples(matrix, reps, rng), gamma))
        out[group] = {name: [p, float(lo), float(hi)] for name, p, lo, hi in zip(AGGREGATES, points, low, high)}
    return out


def improvement_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of resampled runs (... x runs_x x tasks, ... x runs_y x tasks): per task the share of
    pairs where X's run beats Y's (ties count half: the Mann-Whitney U statistic over n_x * n_y, as
    rliable's `probability_of_improvement`), averaged over tasks."""
    greater = (x[..., :, None, :] > y[..., None, :, :]).mean(axis=(-3, -2))
    ties = (x[..., :, None, :] == y[..., None, :, :]).mean(axis=(-3, -2))
    return (greater + 0.5 * ties).mean(axis=-1)


def improvement_intervals(scores: dict[str, np.ndarray], reps: int, seed: int) -> dict:
    """{"X > Y": [P(X > Y), low, high]} for every pair of groups with at least two runs each: the
    point from rliable's `probability_of_improvement`, the interval from resampling both groups'
    runs independently (rliable's `StratifiedIndependentBootstrap`)."""
    from rliable import metrics

    groups = [g for g, m in scores.items() if len(m) >= 2]
    out = {}
    for i, x in enumerate(groups):
        for j, y in enumerate(groups[i + 1:], start=i + 1):
            rng = np.random.default_rng([seed, i, j])
            samples = improvement_of(stratified_samples(scores[x], reps, rng), stratified_samples(scores[y], reps, rng))
            low, high = percentile_interval(samples)
            out[f"{x} > {y}"] = [float(metrics.probability_of_improvement(scores[x], scores[y])), float(low), float(high)]
    return out


def profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int) -> dict:
    """{group: [fraction of runs with a score > tau, low, high], one value per tau}: rliable's
    run-score performance profile (`create_performance_profile`), with a stratified bootstrap band."""
    out = {}
    for number, (group, matrix) in enumerate(scores.items()):
        if not len(matrix):
            continue
        flat = matrix.reshape(-1)
        point = (flat[:, None] > taus[None, :]).mean(axis=0)
        samples = stratified_samples(matrix, reps, np.random.default_rng([seed, number])).reshape(reps, -1)
        low, high = percentile_interval((samples[:, :, None] > taus[None, None, :]).mean(axis=1))
        out[group] = [point.tolist(), low.tolist(), high.tolist()]
    return out
