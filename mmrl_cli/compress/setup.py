"""What a `compression` setting changes in a training run: the trainer's two seams.

- `prepare_policy`, before the algorithm is built: give the policy the structure of the
  checkpoint it resumes from; or start from `init_from`'s weights and, on a fresh start,
  shrink them (structured pruning, low-rank factorisation); load the frozen teacher.
- `attach`, once the algorithm exists: the distillation algorithm gets its teacher, kickstarting
  adds its annealed term to the algorithm's loss, unstructured pruning adds its callback.
Everything else in the trainer is the same for every method.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_model
from .structure import adopt_saved_structure


def prepare_policy(cfg, policy: nn.Module, device: torch.device, resume_from: Path | None) -> tuple[nn.Module | None, dict]:
    """Shape/initialise/shrink `policy` as the compression asks (see the module docstring);
    returns the teacher (or None) and what was done (for <run>/compression.json)."""
    from .lowrank import factorise_policy
    from .structured import prune_structured
    from .teacher import load_teacher, source_run

    method, done = cfg.compression, {}
    if resume_from is not None:
        adopt_saved_structure(policy, resume_from / "model.safetensors")
    elif cfg.init_from is not None:
        weights = source_run(cfg, "init_from").checkpoint_dir / "model.safetensors"
        adopt_saved_structure(policy, weights)
        load_model(weights, policy)
        if method.type == "prune" and method.structured:
            done["pruned_groups"] = prune_structured(policy, method.amount)
        elif method.type == "lowrank":
            done["factorised_layers"] = factorise_policy(policy, method.rank, method.energy, method.min_size)
    teacher = load_teacher(cfg, device) if cfg.teacher is not None else None
    return teacher, done


def attach(cfg, policy: nn.Module, algo, teacher: nn.Module | None, total_updates: int, steps_done: int) -> list:
    """Connect the method to the built algorithm; returns the trainer callbacks it needs."""
    from .kickstart import Kickstart
    from .unstructured import GradualPruning

    method = cfg.compression
    if method.type == "distill":
        algo.teacher = teacher
    elif method.type == "kickstart":
        kickstart = Kickstart(method, teacher, steps_done)
        algo.gradient.extra_losses.append(kickstart.loss)
        return [kickstart]
    elif method.type == "prune" and not method.structured:
        return [GradualPruning(method, policy, algo.gradient.optimizer, total_updates)]
    return []
