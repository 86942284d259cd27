"""`mmrl compress`: one compressed student run per call (a method and a seed), then the report.

The student is an ordinary training run (the teacher's config with the method's `compression`
section, `teacher` or `init_from` pointing at the teacher, the student's model), trained by the
one trainer; so `mmrl eval run=<student>` evaluates it and `mmrl train resume=<student>
total_steps=...` fine-tunes it further. Distillation with `finetune_steps` adds a second run,
RL from the distilled weights (`init_from`). Runs go to `out_dir`
(``<runs_root>/compress/<teacher run name>`` by default), and the report there compares every
finished student in it with the teacher.

A signal stops the call (`CompressStopped`): the student run stops after a checkpoint, nothing
after it runs (no fine-tune from half-distilled weights, no report). Re-running the same call
picks up where it stopped: a run of the same config in `out_dir` that a signal stopped continues
from its checkpoint, a finished one is kept, and the report is refreshed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import signal
import sys
import threading
from pathlib import Path

from omegaconf import OmegaConf

from ..compose import compose_train_config
from ..config import ConfigError, TrainConfig
from ..signals import SIGNAL_NAMES
from .report import finished, method_label, write_report
from .settings import CompressCommandConfig
from .teacher import trained_run


class CompressStopped(Exception):
    """A signal stopped `mmrl compress`; the message says where. The same command continues it."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.signal_name = signal_name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as `mmrl train` exits: 143 for SIGTERM, else 130 (Ctrl-C)."""
        return 143 if self.signal_name == "SIGTERM" else 130


def output_dir(cfg: CompressCommandConfig, teacher_dir: Path) -> Path:
    """Where this teacher's compressed runs and report go."""
    return Path(cfg.out_dir) if cfg.out_dir else Path(cfg.runs_root) / "compress" / teacher_dir.name


def student_config(cfg: CompressCommandConfig, teacher: TrainConfig, teacher_dir: Path) -> TrainConfig:
    """The student run's config: the teacher's, with the method, the student model and the sources."""
    method = cfg.compression
    if teacher.algo.type == "dreamer":
        teacher = memoryless_base(teacher, method.type, teacher_dir)
    model = cfg.model
    if model is None:
        model = compose_train_config([f"model={method.student}"]).model if method.type == "distill" else teacher.model
    distill = method.type == "distill"
    student = dataclasses.replace(
        teacher, model=model, compression=method, hardware=cfg.hardware, seed=cfg.seed, total_steps=cfg.total_steps,
        runs_root=cfg.runs_root, run_name=None, resume=None, teacher=str(teacher_dir) if distill else None,
        init_from=None if distill else str(teacher_dir),
    )
    student.eval = dataclasses.replace(teacher.eval, every_steps=max(cfg.total_steps // 4, 1))
    student.check()
    return student


def memoryless_base(teacher: TrainConfig, method: str, teacher_dir: Path) -> TrainConfig:
    """A dreamer teacher's config as a memoryless student's starting point: the default algorithm
    (PPO: its rollouts for distillation, its updates for `finetune_steps`) and rollout shape. Only
    distillation replays a recurrent teacher (compress/teacher.py); other methods would compress the
    world model itself."""
    if method != "distill":
        raise ConfigError(f"compression: {teacher_dir} is a dreamer agent: only compression=distill takes it "
                          f"(into a memoryless student), not compression={method}")
    defaults = compose_train_config(["algo=ppo"])
    rollout = dataclasses.replace(defaults.rollout, bootstrap_truncated=teacher.rollout.bootstrap_truncated)
    return dataclasses.replace(teacher, algo=defaults.algo, rollout=rollout)


def finetune_config(distilled: TrainConfig, distilled_dir: Path, steps: int) -> TrainConfig:
    """RL after distillation: the teacher's algorithm from the distilled weights."""
    from ..config import NoCompression

    return dataclasses.replace(distilled, compression=NoCompression(), teacher=None, init_from=str(distilled_dir),
                               total_steps=steps)


def same_run(run_dir: Path, cfg: TrainConfig) -> bool:
    """True when `run_dir` holds a run of `cfg` (hardware aside: a run may continue on other hardware)."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
    except Exception:  # no config yet, or not one: not this run
        return False
    wanted = OmegaConf.to_container(OmegaConf.structured(dataclasses.replace(cfg, resume=None)))
    if not isinstance(saved, dict):
        return False
    saved.pop("hardware", None)
    wanted.pop("hardware", None)
    return saved == wanted


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of `run_dir`, or None when it has none."""
    from ..checkpoint import CheckpointError, find_checkpoint

    try:
        return find_checkpoint(run_dir)[0]
    except CheckpointError:
        return None


def earlier_run(out_dir: Path, name: str, cfg: TrainConfig) -> Path | None:
    """A run of `cfg` an earlier call left under `out_dir` as `name` (or `name.1`, ...): a finished
    one, else a stopped one with a checkpoint to continue from; None when there is neither."""
    pattern = re.compile(re.escape(name) + r"(\.[0-9]+)?")
    candidates = sorted((d for d in out_dir.iterdir() if d.is_dir() and pattern.fullmatch(d.name)),
                        key=lambda d: int(d.name[len(name) + 1:] or 0)) if out_dir.is_dir() else []
    candidates = [d for d in candidates if same_run(d, cfg)]
    return next((d for d in candidates if finished(d)), None) or \
        next((d for d in candidates if last_checkpoint(d) is not None), None)


def train_stage(cfg: TrainConfig, out_dir: Path, name: str) -> Path:
    """Train the run `cfg` under `out_dir` and return its directory: a finished run of the same
    config is kept, a stopped one continues from its checkpoint, else a new directory `name` (or
    `name.1`, ...) is made. Raises CompressStopped when a signal stops the run."""
    from .. import trainer

    run_dir = earlier_run(out_dir, name, cfg)
    resume_from = None
    if run_dir is None:
        run_dir = new_student_dir(out_dir, name)
    elif finished(run_dir):
        print(f"mmrl compress: {run_dir} already holds this run, finished: kept (another seed or run_name "
              f"trains another)", file=sys.stderr)
        return run_dir
    else:
        resume_from = last_checkpoint(run_dir)
        print(f"mmrl compress: continuing {run_dir} from checkpoint {resume_from.name}", file=sys.stderr)
    try:
        summary = trainer.train(cfg, run_dir, resume_from=resume_from)
    except KeyboardInterrupt:  # a second signal stops at once: the last periodic checkpoint is kept
        raise CompressStopped(f"stopped at once in {run_dir} (its last periodic checkpoint is kept)", "SIGINT") from None
    if summary["stopped_by"]:
        raise CompressStopped(f"stopped by {summary['stopped_by']} after {summary['steps']:,} of {cfg.total_steps:,} "
                              f"steps of {run_dir} (checkpoint saved)", summary["stopped_by"])
    return run_dir


@contextlib.contextmanager
def signals_stop_at_once():
    """Outside the student runs (which stop cleanly after a checkpoint on their own), SIGINT and
    SIGTERM raise CompressStopped at once: loading the teacher or measuring the report is simply
    done again by the next call."""

    def stop(signum, _frame):
        name = SIGNAL_NAMES.get(signum, str(signum))
        raise CompressStopped(f"stopped by {name}", name)

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in SIGNAL_NAMES}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def new_student_dir(out_dir: Path, name: str) -> Path:
    """A new directory `name` (or `name.1`, `name.2`, ... if taken) under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = out_dir / (name if n == 0 else f"{name}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory {name} under {out_dir}")


def run_compress(cfg: CompressCommandConfig) -> dict:
    """Train the student(s) of this call, then write the report of everything in the output dir.

    Continues what an earlier, stopped call of the same config left (see the module docstring);
    raises CompressStopped when a signal stops it, before anything after the stopped run."""

    with signals_stop_at_once():
        teacher = trained_run(cfg.teacher, cfg.runs_root, "teacher")
        out_dir = output_dir(cfg, teacher.run_dir)
        student = student_config(cfg, teacher.typed, teacher.run_dir)
        name = f"{method_label(cfg.compression)}-s{cfg.seed}" + (f"-{cfg.run_name}" if cfg.run_name else "")
        run_dir = train_stage(student, out_dir, name)
        steps = getattr(cfg.compression, "finetune_steps", 0)
        if steps:
            train_stage(finetune_config(student, run_dir, steps), out_dir, f"{run_dir.name}-rl")
        return write_report(out_dir, teacher, cfg)
