"""Trained runs used by compression: a frozen teacher, or the weights a run starts from.

Both are found like `mmrl eval run=...` finds a run (directory, checkpoint directory, or
`latest`), with their problems as one-line ConfigErrors naming the key (`teacher`, `init_from`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..builders import load_policy
from ..config import ConfigError, TrainConfig


def first_difference(a, b, prefix: str) -> str | None:
    """The first key (dotted) whose value differs between config sections `a` and `b`."""
    if type(a) is not type(b):
        return f"{prefix}.type"
    for f in dataclasses.fields(a):
        if getattr(a, f.name) != getattr(b, f.name):
            return f"{prefix}.{f.name}"
    return None


def trained_run(value: str, runs_root: str, key: str):
    """The run `value` names (its latest intact checkpoint), checked; see `runs.load_run_checkpoint`."""
    from ..runs import load_run_checkpoint

    return load_run_checkpoint(value, runs_root, "latest", key)


def load_trained_policy(run, device: torch.device) -> nn.Module:
    """The policy of a found run, built (and shaped) as saved, with its weights loaded."""
    return load_policy(run.typed, run.checkpoint_dir / "model.safetensors", device)


def source_run(cfg: TrainConfig, key: str):
    """The run `cfg.<key>` names (``teacher`` or ``init_from``), checked: a teacher must have been
    trained on this run's env (`data`), an init_from run must have its model (any env: transfer)
    and, for low-rank factorisation, at least one layer the factorisation shrinks."""
    run = trained_run(getattr(cfg, key), cfg.runs_root, key)
    section = "data" if key == "teacher" else "model"
    different = first_difference(getattr(run.typed, section), getattr(cfg, section), section)
    if different:
        what = "was trained on another env" if key == "teacher" else "has another model"
        raise ConfigError(f"{key}: {run.run_dir} {what} ({different} is {_value(run.typed, different)!r} there, "
                          f"{_value(cfg, different)!r} here)")
    if key == "teacher" and cfg.compression.type == "kickstart":
        check_memoryless(run)
    if key == "init_from" and cfg.compression.type == "lowrank":
        check_factorisable(run, cfg.compression)
    return run


def check_factorisable(run, method) -> None:
    """ConfigError when low-rank factorisation (`method`) of the trained weights of `run` would
    shrink no layer: a run that changes nothing is a mistake to say, not to train."""
    from .lowrank import nothing_to_factorise

    reason = nothing_to_factorise(load_trained_policy(run, torch.device("cpu")), method.rank, method.energy,
                                  method.min_size)
    if reason is not None:
        raise ConfigError(reason)


def check_memoryless(run) -> None:
    """ConfigError for a recurrent teacher under kickstarting: its term labels minibatches of states
    torn from their episodes (compression=distill replays a recurrent teacher along its rollouts)."""
    memory = getattr(run.typed.model, "memory", "none")
    what = "a dreamer agent (a recurrent latent state)" if run.typed.algo.type == "dreamer" else \
        f"a recurrent policy (model.memory={memory})" if memory != "none" else None
    if what:
        raise ConfigError(f"teacher: {run.run_dir} is {what}; compression=kickstart needs a memoryless teacher "
                          f"(compression=distill replays a recurrent one along the student's episodes)")


def load_teacher(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The frozen teacher policy of `cfg.teacher` (a recurrent one only for distillation)."""
    run = source_run(cfg, "teacher")
    teacher = load_trained_policy(run, device)
    teacher.eval().requires_grad_(False)
    return teacher


def _value(cfg, dotted: str):
    """The value of a dotted key of a config dataclass."""
    section, _, name = dotted.partition(".")
    value = getattr(cfg, section)
    return type(value).__name__ if name == "type" and not hasattr(value, "type") else getattr(value, name)
