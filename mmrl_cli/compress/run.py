"""`mmrl compress`: one compressed student run per call (a method and a seed), then the report.

The student is an ordinary training run (the teacher's config with the method's `compression`
section, `teacher` or `init_from` pointing at the teacher, the student's model), trained by the
one trainer; so `mmrl eval run=<student>` evaluates it and `mmrl train resume=<student>
total_steps=...` fine-tunes it further. Distillation with `finetune_steps` adds a second run,
RL from the distilled weights (`init_from`). Runs go to `out_dir`
(``<runs_root>/compress/<teacher run name>`` by default), and the report there compares every
student in it with the teacher.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, compose_train_config
from .settings import CompressCommandConfig
from .teacher import trained_run


def output_dir(cfg: CompressCommandConfig, teacher_dir: Path) -> Path:
    """Where this teacher's compressed runs and report go."""
    return Path(cfg.out_dir) if cfg.out_dir else Path(cfg.runs_root) / "compress" / teacher_dir.name


def method_label(compression) -> str:
    """A short name of a method and its main setting, for run names and the report."""
    if compression.type == "prune":
        return f"prune-structured-{compression.amount:g}" if compression.structured else f"prune-{compression.sparsity:g}"
    if compression.type == "lowrank":
        return f"lowrank-r{compression.rank}" if compression.rank is not None else f"lowrank-e{compression.energy:g}"
    return compression.type


def student_config(cfg: CompressCommandConfig, teacher: TrainConfig, teacher_dir: Path) -> TrainConfig:
    """The student run's config: the teacher's, with the method, the student model and the sources."""
    method = cfg.compression
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


def finetune_config(distilled: TrainConfig, distilled_dir: Path, steps: int) -> TrainConfig:
    """RL after distillation: the teacher's algorithm from the distilled weights."""
    from ..config import NoCompression

    return dataclasses.replace(distilled, compression=NoCompression(), teacher=None, init_from=str(distilled_dir),
                               total_steps=steps)


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
    """Train the student(s) of this call, then write the report of everything in the output dir."""
    from ..trainer import train
    from .report import write_report

    teacher = trained_run(cfg.teacher, cfg.runs_root, "teacher")
    out_dir = output_dir(cfg, teacher.run_dir)
    student = student_config(cfg, teacher.typed, teacher.run_dir)
    name = f"{method_label(cfg.compression)}-s{cfg.seed}" + (f"-{cfg.run_name}" if cfg.run_name else "")
    run_dir = new_student_dir(out_dir, name)
    train(student, run_dir)
    steps = getattr(cfg.compression, "finetune_steps", 0)
    if steps:
        finetune_dir = new_student_dir(out_dir, f"{run_dir.name}-rl")
        train(finetune_config(student, run_dir, steps), finetune_dir)
    return write_report(out_dir, teacher, cfg)
