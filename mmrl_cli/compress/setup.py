"""What a `compression` setting changes in a training run, beyond the policy pipeline
(`builders.build_policy_from`, which loads `init_from`'s weights and applies the transforms):

- `init_from_weights` and `load_teacher`: the runs a method starts from or learns from;
- `attach`, once the algorithm exists (the distillation algorithm got its teacher when built): kickstarting
  adds its annealed term to the algorithm's loss, unstructured pruning adds its callback.
Everything else in the trainer is the same for every method.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn



def init_from_weights(cfg) -> Path:
    """The weights file of the run `cfg.init_from` names (checked: same model, factorisable)."""
    from .teacher import source_run

    return source_run(cfg, "init_from").checkpoint_dir / "model.safetensors"


def load_teacher(cfg, device: torch.device) -> nn.Module:
    """The frozen teacher policy of `cfg.teacher`."""
    from .teacher import load_teacher as load

    return load(cfg, device)


def attach(cfg, policy: nn.Module, algo, teacher: nn.Module | None, total_updates: int, steps_done: int) -> list:
    """Connect the method to the built algorithm; returns the trainer callbacks it needs."""
    from .kickstart import Kickstart
    from .unstructured import GradualPruning

    method = cfg.compression
    if method.type == "kickstart":  # (compression=distill: the algorithm took its teacher when built)
        kickstart = Kickstart(method, teacher, steps_done)
        algo.gradient.extra_losses.append(kickstart.loss)
        return [kickstart]
    elif method.type == "prune" and not method.structured:
        return [GradualPruning(method, policy, algo.gradient.optimizer, total_updates)]
    return []
