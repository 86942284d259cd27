"""The trade-off report of `mmrl compress`: every student in the output directory beside its teacher.

For each model: total and non-zero parameters, the size of its saved weights file, MACs per
acting step, median CPU latency of a batch (timed in turns with the other models), and held-out
success and return with 95% intervals, all models on the *same* held-out levels. Written as
``report.json``, ``report.md`` and ``report.png`` (success against non-zero parameters and against
latency), atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.progress import Progress

from ..checkpoint import write_text_atomic
from ..evaluation import evaluate, write_json
from .measure import latencies_ms, macs_per_step, parameter_counts
from .teacher import load_trained_policy, trained_run
from ..text import tokenizer_for


def finished(run_dir: Path) -> bool:
    """True when the run in `run_dir` got to its end: a summary that names nothing that stopped it."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("stopped_by") is None


def method_label(compression) -> str:
    """A short name of a method and its main setting, for run names and the report."""
    if compression.type == "prune":
        return f"prune-structured-{compression.amount:g}" if compression.structured else f"prune-{compression.sparsity:g}"
    if compression.type == "lowrank":
        return f"lowrank-r{compression.rank}" if compression.rank is not None else f"lowrank-e{compression.energy:g}"
    return compression.type


def student_dirs(out_dir: Path) -> list[Path]:
    """Finished student runs under `out_dir` (a checkpoint and a summary of a run that got to its
    end: a stopped one is not a result yet), by name."""
    return sorted(p for p in out_dir.iterdir() if p.is_dir() and (p / "checkpoints").is_dir() and finished(p))


def describe(run) -> str:
    """The method of a run, in words, from its config."""
    c = run.typed.compression
    if c.type == "none":
        return "RL fine-tune" if run.typed.init_from else "teacher"
    return method_label(c) + (f" ({run.typed.model.type} student)" if c.type == "distill" else "")


def observations(cfg, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """A batch of real observations from the teacher's env (its first step), on CPU."""
    from ..envs import make_env

    env = make_env(cfg.data, batch, torch.device("cpu"), seed, "heldout", tokenizer_for(cfg.model))
    obs = env.reset(seed=seed)
    obs = {k: v.clone() for k, v in obs.items()}
    if hasattr(env, "close"):
        env.close()
    return obs


def weights_file_bytes(run) -> int:
    """Bytes of the run's final weights file (written compactly where weights are sparse)."""
    path = run.run_dir / "model.safetensors"
    return path.stat().st_size if path.is_file() else (run.checkpoint_dir / "model.safetensors").stat().st_size


def measure_all(teacher, students: list, cfg) -> list[dict]:
    """One row per model (teacher first); see the module docstring."""
    runs = [teacher, *students]
    device = torch.device("cpu")
    policies = {str(r.run_dir): load_trained_policy(r, device).eval() for r in runs}
    seed = teacher.typed.seed + 10_000
    obs = observations(teacher.typed, cfg.report.latency_batch, seed)
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("held-out evaluation", total=len(runs))
        for run in runs:
            policy = policies[str(run.run_dir)]
            results = evaluate(policy, teacher.typed, device, "heldout", cfg.report.episodes, True, seed=seed)
            total, nonzero = parameter_counts(policy)
            rows.append({
                "method": describe(run), "run": str(run.run_dir), "seed": run.typed.seed, "model": run.typed.model.type,
                "steps": json.loads((run.run_dir / "summary.json").read_text()).get("steps") if run is not teacher
                else run.typed.total_steps,
                "parameters": total, "nonzero_parameters": nonzero, "file_bytes": weights_file_bytes(run),
                "macs_per_step": macs_per_step(policy, obs),
                "success_rate": results["success_rate"], "success_ci95": results["success_ci95"],
                "return_mean": results["return_mean"], "return_ci95": results["return_ci95"],
            })
            progress.advance(task)
        task = progress.add_task("latency", total=cfg.report.latency_repeats)
        latency = latencies_ms(policies, obs, cfg.report.latency_repeats, cfg.report.latency_threads,
                               lambda: progress.advance(task))
    base = rows[0]
    for row in rows:
        row["latency_ms"] = latency[row["run"]]
        row["parameters_ratio"] = base["parameters"] / row["parameters"]
        row["nonzero_ratio"] = base["nonzero_parameters"] / max(row["nonzero_parameters"], 1)
        row["file_ratio"] = base["file_bytes"] / row["file_bytes"]
        row["speedup"] = base["latency_ms"] / row["latency_ms"] if row is not base else 1.0
        if base["success_rate"] and row["success_rate"] is not None:
            row["success_kept"] = row["success_rate"] / base["success_rate"]
    return rows


def markdown(rows: list[dict], cfg) -> str:
    """The report table."""
    lines = [
        "# mmrl compress: report", "",
        f"Teacher: `{rows[0]['run']}`. All models on the same {cfg.report.episodes} held-out episodes (argmax actions); "
        f"latency: median of {cfg.report.latency_repeats} CPU forward passes of a batch of {cfg.report.latency_batch} "
        f"on {cfg.report.latency_threads} thread(s), models timed in turns.", "",
        "| method | seed | params | non-zero | file KB | MACs/step | latency ms | speed-up | held-out success (95% CI) | kept | return |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        success = "n/a" if r["success_rate"] is None else \
            f"{r['success_rate']:.3f} ({r['success_ci95'][0]:.3f}-{r['success_ci95'][1]:.3f})"
        kept = f"{100 * r['success_kept']:.1f}%" if "success_kept" in r else "n/a"
        lines.append(f"| {r['method']} | {r['seed']} | {r['parameters']:,} ({r['parameters_ratio']:.1f}x) | "
                     f"{r['nonzero_parameters']:,} ({r['nonzero_ratio']:.1f}x) | {r['file_bytes'] / 1024:.0f} "
                     f"({r['file_ratio']:.1f}x) | {r['macs_per_step'] / 1e6:.2f}M | {r['latency_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {success} | {kept} | {r['return_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Held-out success against non-zero parameters and against latency (teacher: a star)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "nonzero_parameters", "non-zero parameters"), (axes[1], "latency_ms", "CPU latency per batch (ms)")):
        methods = sorted({r["method"] for r in rows[1:]})
        for i, method in enumerate(methods):
            group = [r for r in rows[1:] if r["method"] == method and r["success_rate"] is not None]
            if not group:
                continue
            errors = [[r["success_rate"] - r["success_ci95"][0] for r in group], [r["success_ci95"][1] - r["success_rate"] for r in group]]
            ax.errorbar([r[key] for r in group], [r["success_rate"] for r in group], yerr=errors, fmt="o", capsize=3,
                        label=method, color=f"C{i}")
        teacher = rows[0]
        if teacher["success_rate"] is not None:
            ax.plot(teacher[key], teacher["success_rate"], "k*", markersize=14, label="teacher")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out success")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("mmrl compress: what each method saves and what it costs")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_report(out_dir: Path, teacher, cfg) -> dict:
    """Measure the teacher and every student in `out_dir`; write report.json/.md/.png; return the data."""
    students = [trained_run(str(d), cfg.runs_root, "student") for d in student_dirs(out_dir)]
    rows = measure_all(teacher, students, cfg)
    report = {"teacher": str(teacher.run_dir), "rows": rows, "report_md": str(out_dir / "report.md"),
              "report_png": str(out_dir / "report.png")}
    write_json(out_dir / "report.json", report)
    write_text_atomic(out_dir / "report.md", markdown(rows, cfg))
    plot(rows, out_dir / "report.png")
    return report
