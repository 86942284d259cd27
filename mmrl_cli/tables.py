"""The tables commands end with (rich): train's summary, eval's results, sweep's best trials,
compress's trade-offs.
"""

from __future__ import annotations

from pathlib import Path


def rate_with_interval(value: float | None, interval: list[float] | None) -> str:
    """"0.950  (95% CI 0.930 to 0.965)", or why there is no figure."""
    if value is None:
        return "not defined for this env (see the return)"
    low, high = interval
    return f"{value:.3f}  (95% CI {low:.3f} to {high:.3f})"


def print_summary(summary: dict) -> None:
    """The end-of-run table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mmrl train: summary", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # long paths wrap instead of being cut
    table.add_row("held-out success rate", rate_with_interval(summary["heldout_success_rate"], summary["heldout_success_ci95"]))
    table.add_row("held-out return", rate_with_interval(summary["heldout_return"], summary["heldout_return_ci95"]))
    if summary["validation_success_rate"] is None:
        table.add_row("validation return", f"{summary['validation_return']:.3f}  (last periodic evaluation)")
    else:
        table.add_row("validation success rate", f"{summary['validation_success_rate']:.3f}  (last periodic evaluation)")
    if summary.get("learns_from_data_only"):  # behaviour cloning: gradient steps on a dataset, no env steps
        table.add_row("updates", f"{summary['updates']:,} (from a dataset: no env steps)")
        table.add_row("wall time", f"{summary['wall_seconds']:.1f} s ({summary['updates_per_second']:,.1f} updates/s)")
    else:
        table.add_row("env steps", f"{summary['steps']:,}")
        table.add_row("wall time", f"{summary['wall_seconds']:.1f} s ({summary['steps_per_second']:,.0f} steps/s)")
    if summary.get("parameters_total"):
        trainable, total = summary["parameters_trainable"], summary["parameters_total"]
        table.add_row("parameters", f"{total:,} ({trainable:,} trainable, {trainable / total:.1%})")
    if summary["skipped_steps"]:
        table.add_row("skipped gradient steps", f"{summary['skipped_steps']} (non-finite loss or gradient)")
    table.add_row("device", summary["device"])
    table.add_row("saved to", summary["run_dir"])
    Console().print(table)


def print_compress(report: dict) -> None:
    """The trade-off table of `mmrl compress`."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl compress: teacher {report['teacher']}")
    for column in ("method", "seed", "params", "non-zero", "file KB", "MACs/step", "latency ms", "speed-up", "held-out success", "kept"):
        table.add_column(column, overflow="fold")
    for r in report["rows"]:
        success = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.3f} ({r['success_ci95'][0]:.2f}-{r['success_ci95'][1]:.2f})"
        table.add_row(r["method"], str(r["seed"]), f"{r['parameters']:,}", f"{r['nonzero_parameters']:,}",
                      f"{r['file_bytes'] / 1024:.0f}", f"{r['macs_per_step'] / 1e6:.2f}M", f"{r['latency_ms']:.2f}",
                      f"{r['speedup']:.2f}x", success, f"{100 * r['success_kept']:.1f}%" if "success_kept" in r else "n/a")
    Console().print(table)
    print(f"report: {report['report_md']} (plot: {report['report_png']})")


def print_sweep(results: dict) -> None:
    """The table `mmrl sweep` ends with."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl sweep: {results['study_name']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("trials", ", ".join(f"{n} {state}" for state, n in results["counts"].items()))
    table.add_row("env steps spent", f"{results['steps_spent']:,}")
    if results["best_trial"]:
        best = results["best_trial"]
        table.add_row("best trial (validation)", f"{best['number']}: {', '.join(f'{v:.4g}' for v in best['values'])}")
    for r in results["retrained"]:
        success = (f"held-out success {r['heldout_success_mean']:.3f} (95% CI over seeds "
                   f"{r['heldout_success_ci95_over_seeds'][0]:.3f} to {r['heldout_success_ci95_over_seeds'][1]:.3f}), "
                   if "heldout_success_mean" in r else "")
        table.add_row(f"retrained #{r['rank_in_sweep']} (trial {r['trial']})",
                      f"{success}held-out return {r['heldout_return_mean']:.3f}, validation {r['validation_mean']:.3f}, "
                      f"{r['seeds']} fresh seeds")
    if results["preset"]:
        table.add_row("best config", f"mmrl train exp={results['preset_name']}  ({results['preset']})")
    table.add_row("report", str(Path(results["sweep_dir"]) / "report.md"))
    Console().print(table)


def print_eval(results: dict) -> None:
    """The table `mmrl eval` prints."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl eval: {results['split']} levels, checkpoint {results['checkpoint']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    first = "argmax" if results["deterministic"] in (None, True) else "sampled"
    for label, figures in ((first, results), ("sampled", results.get("sampled"))):
        if figures is None:
            continue
        table.add_row(f"success rate ({label} actions)", rate_with_interval(figures["success_rate"], figures["success_ci95"]))
        table.add_row(f"return ({label} actions)", rate_with_interval(figures["return_mean"], figures["return_ci95"]))
        table.add_row(f"mean episode length ({label} actions)", f"{figures['length_mean']:.1f}")
    table.add_row("episodes", f"{results['episodes']} per kind of action, the same levels")
    table.add_row("results", str(Path(results["run"]) / "eval" / "results.json"))
    if "gif" in results:
        table.add_row("episodes GIF", f"{results['gif']} ({first} actions)")
    if "gif_unavailable" in results:
        table.add_row("episodes GIF", f"none: {results['gif_unavailable']}")
    Console().print(table)
