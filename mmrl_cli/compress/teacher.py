"""Trained runs used by compression: a frozen teacher, or the weights a run starts from.

Both are found like `mmrl eval run=...` finds a run (directory, checkpoint directory, or
`latest`), with their problems as one-line ConfigErrors naming the key (`teacher`, `init_from`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..builders import policy_for_weights
from ..checkpoint import load_model
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
    weights = run.checkpoint_dir / "model.safetensors"
    policy = policy_for_weights(run.typed, weights, device)
    load_model(weights, policy)
    return policy


def teacher_run(cfg: TrainConfig):
    """The run `cfg.teacher` names, checked; ConfigError if it plays another env than `cfg`."""
    run = trained_run(cfg.teacher, cfg.runs_root, "teacher")
    different = first_difference(run.typed.data, cfg.data, "data")
    if different:
        raise ConfigError(f"teacher: {run.run_dir} was trained on another env ({different} differs: "
                          f"{_value(run.typed, different)!r} there, {_value(cfg, different)!r} here)")
    return run


def init_run(cfg: TrainConfig):
    """The run `cfg.init_from` names, checked; it must have this run's model config (any env: transfer)."""
    run = trained_run(cfg.init_from, cfg.runs_root, "init_from")
    different = first_difference(run.typed.model, cfg.model, "model")
    if different:
        raise ConfigError(f"init_from: {run.run_dir} has another model ({different} is {_value(run.typed, different)!r} "
                          f"there, {_value(cfg, different)!r} here)")
    return run


def load_teacher(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The frozen teacher policy of `cfg.teacher`."""
    teacher = load_trained_policy(teacher_run(cfg), device)
    teacher.eval().requires_grad_(False)
    return teacher


def load_initial_weights(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The trained policy of `cfg.init_from`."""
    return load_trained_policy(init_run(cfg), device)


def _value(cfg, dotted: str):
    """The value of a dotted key of a config dataclass."""
    section, _, name = dotted.partition(".")
    value = getattr(cfg, section)
    return type(value).__name__ if name == "type" and not hasattr(value, "type") else getattr(value, name)
