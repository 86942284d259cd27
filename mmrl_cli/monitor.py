"""TensorBoard logging and the rich terminal view, with live problem warnings.

The monitor logs whatever named metrics an algorithm's update returns (`tag_for` names their
TensorBoard tags), and watches what usually goes wrong in RL runs, saying so while the run is
alive: vanishing or exploding gradients (per module, measured before clipping), KL blow-ups
between updates, and a growing gap between training-level and validation success (overfitting to
the training levels, when training uses a finite subset of them).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Thresholds for the live warnings (KL blow-up, generalisation gap).
KL_WARN_ABOVE = 0.1
GAP_WARN_ABOVE = 0.15
# ... and when the gap keeps growing: larger at each of this many evaluations in a row (and above
# GAP_GROWING_ABOVE, so that noise around zero does not warn).
GAP_GROWING_EVALS = 3
GAP_GROWING_ABOVE = 0.05
# Live view refreshes at most this often (rebuilding it every update would cost more than a fast update).
REFRESH_SECONDS = 0.25
# TensorBoard tags of the update metrics every algorithm may report (others: see `tag_for`).
METRIC_TAGS = {
    "approx_kl": "losses/approx_kl", "clipfrac": "losses/clipfrac", "explained_variance": "losses/explained_variance",
    "entropy": "policy/entropy", "grad_norm": "grad/global_norm", "learning_rate": "charts/learning_rate",
    "clip_range": "charts/clip_range",
}


def truncate_metrics(path: Path, last_update: int) -> None:
    """Drop metrics.jsonl lines past `last_update` (logged by a session that died after its checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if row.get("update", 0) <= last_update:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def gap_keeps_growing(gaps: list[float]) -> bool:
    """True when the generalisation gap grew at each of the last `GAP_GROWING_EVALS` evaluations and is
    now above `GAP_GROWING_ABOVE`."""
    recent = gaps[-GAP_GROWING_EVALS - 1:]
    return (len(recent) == GAP_GROWING_EVALS + 1 and recent[-1] > GAP_GROWING_ABOVE
            and all(later > earlier for earlier, later in zip(recent, recent[1:])))


def headline(results: dict) -> float:
    """An evaluation's headline figure: its success rate, or its mean return where success is undefined."""
    return results["return_mean"] if results["success_rate"] is None else results["success_rate"]


def tag_for(name: str) -> str:
    """TensorBoard tag of an update metric: known names by `METRIC_TAGS`, ``loss_x`` as ``losses/x``,
    a name with a ``/`` as it is (``perf/worker_0_sps``), anything else an algorithm reports as
    ``update/<name>``."""
    if name in METRIC_TAGS:
        return METRIC_TAGS[name]
    if "/" in name:
        return name
    return f"losses/{name.removeprefix('loss_')}" if name.startswith("loss_") else f"update/{name}"


class Monitor:
    """Everything a run reports: TensorBoard scalars, the live console view, warnings."""

    def __init__(self, cfg, run_dir: Path, total_steps: int, console: Console | None = None, start: tuple[int, int] = (0, 0),
                 skipped_before: int = 0):
        """`start` = (updates, env steps) already done and `skipped_before` = gradient steps skipped
        by then: a resumed run continues its logs from there."""
        self.cfg = cfg.monitor
        self.console = console or Console()
        self.total_steps = total_steps
        start_update, start_step = start
        self.writer = None
        if self.cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a crashed session logged after its last checkpoint.
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        # One JSON line per update: every metric, exactly as computed (resume tests compare these).
        self.metrics_path = run_dir / "metrics.jsonl"
        truncate_metrics(self.metrics_path, start_update)
        self.metrics_file = open(self.metrics_path, "a")
        self.skipped_reported = skipped_before
        self.latest: dict[str, float] = {}
        self.warnings: list[str] = []
        self.warning_counts: dict[str, int] = {}  # how often each kind of problem was seen (warn)
        self.gaps: list[float] = []  # train - validation success at each evaluation (overfitting warnings)
        self.live = None
        self.last_refresh = 0.0
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
        )
        self.task = self.progress.add_task("train", total=total_steps)
        self.interactive = self.cfg.progress and self.console.is_terminal
        self.last_print = 0.0
        self.step = start_step
        self.progress.update(self.task, completed=start_step)

    # ----------------------------------------------------------------------- lifecycle
    def __enter__(self) -> "Monitor":
        if self.interactive:
            self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)
        if self.writer is not None:
            self.writer.close()
        self.metrics_file.close()

    def render(self) -> Group:
        """The live view: progress bar, latest metrics, most recent warnings."""
        metrics = "  ".join(f"{key} [bold]{self._fmt(value)}[/]" for key, value in self.latest.items())
        return Group(self.progress, metrics, *[f"[yellow]warning:[/] {w}" for w in self.warnings[-3:]])

    @staticmethod
    def _fmt(value: float) -> str:
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"

    def warn(self, message: str, kind: str | None = None) -> None:
        """Show a problem now (and keep it on screen) without stopping the run.

        A problem of the same `kind` that comes back (vanishing gradients in one module at every
        update, say) is counted and shown again only at its 10th, 100th, 1000th... occurrence, with
        the count, so a persistent problem cannot flood the terminal or a log.
        """
        kind = kind or message
        count = self.warning_counts[kind] = self.warning_counts.get(kind, 0) + 1
        if str(count).rstrip("0") != "1":  # 1, 10, 100, ... are shown
            return
        if count > 1:
            message = f"{message} ({count} times so far)"
        self.warnings.append(message)
        if self.live is None:
            self.console.print(f"[yellow]warning:[/] {message}")

    # ------------------------------------------------------------------------ recording
    def check_gradients(self, norms: dict[str, float]) -> None:
        """Log per-module gradient norms (before clipping) and warn when any vanishes or explodes."""
        for name, norm in norms.items():
            self.scalar(f"grad/{name}_norm", norm)
            if norm < self.cfg.grad_vanish_below:
                self.warn(f"vanishing gradients in '{name}' (norm {norm:.2e})", kind=f"vanishing {name}")
            elif norm > self.cfg.grad_explode_above or not math.isfinite(norm):
                self.warn(f"exploding gradients in '{name}' (norm {norm:.2e})", kind=f"exploding {name}")

    def scalar(self, tag: str, value: float) -> None:
        if self.writer is not None and value is not None and value == value:  # skip undefined and NaN
            self.writer.add_scalar(tag, value, self.step)

    def log_update(self, update: int, step: int, metrics: dict[str, float], episodes: list, skipped_total: int,
                   sps: float, update_seconds: float, module_grad_norms=None) -> None:
        """Write one update's metrics, its finished episodes, skipped steps and speed.

        `episodes`: (returns, lengths, successes) tensors of episodes finished during the rollout;
        `module_grad_norms`: a function giving per-module gradient norms (called only when logged).
        Every update goes to metrics.jsonl; TensorBoard every `monitor.log_every_updates` updates.
        """
        self.step = step
        self.metrics_file.write(json.dumps({"update": update, "step": step, **metrics}) + "\n")
        self.metrics_file.flush()
        if skipped_total > self.skipped_reported:
            self.warn(f"skipped {skipped_total - self.skipped_reported} gradient step(s) with a non-finite loss or "
                      f"gradient at update {update} ({skipped_total} in total)", kind="skipped")
            self.skipped_reported = skipped_total
        if metrics.get("approx_kl", 0.0) > KL_WARN_ABOVE:
            self.warn(f"KL blow-up: approx_kl {metrics['approx_kl']:.3f} > {KL_WARN_ABOVE} (lower lr or set algo.target_kl)",
                      kind="kl")
        self.latest.update({"steps/s": sps, "loss": metrics.get("loss_value", float("nan"))})
        if "curriculum_stage" in metrics:  # mmrl_cli/levels: the curriculum's stage, shown live
            self.latest["stage"] = metrics["curriculum_stage"]
        if "approx_kl" in metrics:
            self.latest["kl"] = metrics["approx_kl"]
        if episodes:
            returns = torch.cat([e[0] for e in episodes]).float()
            lengths = torch.cat([e[1] for e in episodes]).float()
            self.latest.update(**{"return": float(returns.mean()), "ep_len": float(lengths.mean())})
            successes = [e[2] for e in episodes if e[2] is not None]
            if successes:  # envs without a notion of success report none
                self.latest["success"] = float(torch.cat(successes).float().mean())
        if update % self.cfg.log_every_updates == 0:
            self.log_scalars(metrics, skipped_total, sps, update_seconds, episodes)
            if module_grad_norms is not None:
                self.check_gradients(module_grad_norms())
        self.progress.update(self.task, completed=step)
        self._refresh()

    def log_scalars(self, metrics: dict[str, float], skipped_total: int, sps: float, update_seconds: float,
                    episodes: list) -> None:
        """TensorBoard scalars of one update."""
        if self.writer is None:
            return
        for name, value in metrics.items():
            self.scalar(tag_for(name), value)
        self.scalar("numerics/skipped_steps", skipped_total)
        self.scalar("perf/sps", sps)
        self.scalar("perf/update_seconds", update_seconds)
        if episodes:
            self.scalar("charts/episodic_return", self.latest["return"])
            self.scalar("charts/episode_length", self.latest["ep_len"])
            self.scalar("charts/episodes", sum(len(e[0]) for e in episodes))
            if "success" in self.latest:
                self.scalar("charts/success_rate", self.latest["success"])

    def log_eval(self, step: int, validation: dict, train: dict | None = None) -> None:
        """Write a periodic evaluation (validation levels, and training levels when they are a finite
        subset); warn when the training levels pull away from the validation ones."""
        self.step = step
        self.scalar("eval/validation_success_rate", validation["success_rate"])
        self.scalar("eval/validation_return", validation["return_mean"])
        self.latest["validation"] = headline(validation)
        if train is not None and train["success_rate"] is not None:
            self.scalar("eval/success_rate", train["success_rate"])
            self.scalar("eval/return", train["return_mean"])
            gap = train["success_rate"] - validation["success_rate"]
            self.scalar("eval/generalization_gap", gap)
            self.gaps.append(gap)
            if gap > GAP_WARN_ABOVE:
                self.warn(f"overfitting to training levels: success {train['success_rate']:.2f} on training "
                          f"vs {validation['success_rate']:.2f} on validation levels", kind="overfitting")
            elif gap_keeps_growing(self.gaps):
                recent = " -> ".join(f"{g:.2f}" for g in self.gaps[-GAP_GROWING_EVALS - 1:])
                self.warn(f"overfitting to training levels: the train/validation success gap keeps growing ({recent}); "
                          f"more training levels (data.num_train_levels) or data.level_sampler=plr may help",
                          kind="gap growing")
        self._refresh(force=True)

    def log_heldout(self, step: int, heldout: dict) -> None:
        """Write the final evaluation on held-out levels."""
        self.step = step
        self.scalar("eval/heldout_success_rate", heldout["success_rate"])
        self.scalar("eval/heldout_return", heldout["return_mean"])
        self.latest["heldout"] = headline(heldout)
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        if self.live is not None:
            if force or time.monotonic() - self.last_refresh > REFRESH_SECONDS:
                self.last_refresh = time.monotonic()
                self.live.update(self.render())
        elif self.cfg.progress and (force or time.monotonic() - self.last_print > 10):
            self.last_print = time.monotonic()
            fields = "  ".join(f"{k} {self._fmt(v)}" for k, v in self.latest.items())
            self.console.print(f"step {self.step:,}/{self.total_steps:,}  {fields}", highlight=False)


class SilentMonitor:
    """The monitor of ranks other than 0 under torch.distributed: rank 0 reports for every rank."""

    def __enter__(self) -> "SilentMonitor":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def log_update(self, *args, **kwargs) -> None:
        pass

    def log_eval(self, *args, **kwargs) -> None:
        pass

    def log_heldout(self, *args, **kwargs) -> None:
        pass
