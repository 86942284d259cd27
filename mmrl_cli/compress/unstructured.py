"""Unstructured magnitude pruning: the smallest weights become exact zeros, on a schedule.

- `prunable_weights`: the weight matrices of linear and conv layers (biases, norms, embeddings
  and position tables are left dense; they are a small share of the parameters).
- `magnitude_masks`: keep-masks for a target sparsity, with one threshold over all layers
  (``global``) or each layer to that sparsity (``layer``).
- `cubic_sparsity`: Zhu & Gupta's (2017) gradual schedule, fast at first, slow at the end.
- `GradualPruning`: a trainer callback that prunes at the scheduled updates and keeps pruned
  weights at zero after every optimiser step (a step-post hook on the optimiser), so
  fine-tuning between pruning steps never revives them.

The masks are the zeros themselves: a weight that is exactly 0 stays 0. A resumed run therefore
needs no saved masks, and the saved model is the final pruned model (masks made permanent);
checkpoints store mostly-zero tensors compactly (`checkpoint.encode_sparse`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .structure import conv1d_class


def prunable_weights(policy: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> weight of every linear/conv layer (Linear, Conv2d, GPT-2 Conv1D, the MLP's
    PairedLinear) of `policy`."""
    from ..models.mlp import PairedLinear

    kinds = (nn.Linear, nn.Conv2d, conv1d_class(), PairedLinear)
    return {f"{name}.weight": m.weight for name, m in policy.named_modules() if isinstance(m, kinds)}


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks (bool) that zero a fraction `sparsity` of the weights, smallest magnitudes first."""
    if scope == "layer":
        return {name: keep_largest(w.detach().abs(), sparsity) for name, w in weights.items()}
    magnitudes = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    drop = int(sparsity * magnitudes.numel())
    if drop == 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    threshold = torch.kthvalue(magnitudes, drop).values.item()
    return {name: w.detach().abs() > threshold for name, w in weights.items()}


def keep_largest(magnitudes: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the largest ``1 - sparsity`` of one tensor's entries."""
    drop = int(sparsity * magnitudes.numel())
    mask = torch.ones_like(magnitudes, dtype=torch.bool)
    if drop:
        mask.view(-1)[torch.topk(magnitudes.flatten(), drop, largest=False).indices] = False
    return mask


def sparsity_of(weights: dict[str, torch.Tensor]) -> float:
    """The fraction of these weights that are exactly zero."""
    total = sum(w.numel() for w in weights.values())
    return sum(int((w == 0).sum()) for w in weights.values()) / max(total, 1)


def cubic_sparsity(step: int, start: int, end: int, final: float) -> float:
    """Target sparsity at update `step`: 0 before `start`, `final` from `end` on, and in between
    ``final * (1 - (1 - t)^3)`` with t the fraction of [start, end] passed (Zhu & Gupta 2017)."""
    if step < start:
        return 0.0
    if step >= end or end <= start:
        return final
    return final * (1 - (1 - (step - start) / (end - start)) ** 3)


class GradualPruning:
    """Trainer callback: magnitude pruning at `steps` updates spread over [start, end] of the run.

    Built on a policy (and its optimiser) before training: weights already at zero (a resumed
    run, a pruned teacher) stay zero from the first step on.
    """

    def __init__(self, cfg, policy: nn.Module, optimizer: torch.optim.Optimizer, total_updates: int):
        self.cfg, self.weights = cfg, prunable_weights(policy)
        self.start = math.floor(cfg.start_fraction * total_updates)
        self.end = max(self.start, math.floor(cfg.end_fraction * total_updates))
        spacing = max(1, (self.end - self.start) // cfg.steps) if cfg.steps > 1 else max(1, self.end - self.start)
        self.prune_at = sorted({min(self.end, self.start + i * spacing) for i in range(cfg.steps)} | {self.end})
        self.masks = {name: w != 0 for name, w in self.weights.items()}
        self.sparsity = sparsity_of(self.weights)  # changes only at a pruning step
        optimizer.register_step_post_hook(lambda *_: self.apply())

    @torch.no_grad()
    def apply(self) -> None:
        """Set the pruned weights back to zero (after each optimiser step)."""
        for name, weight in self.weights.items():
            weight.mul_(self.masks[name])

    def on_update(self, progress, metrics: dict) -> None:
        """Prune to the scheduled sparsity when this update is a pruning step; report sparsity."""
        update = progress.update - 1  # the update just finished, counted from 0
        if update in self.prune_at:
            target = cubic_sparsity(update, self.start, self.end, self.cfg.sparsity)
            self.masks = magnitude_masks(self.weights, target, self.cfg.scope)
            self.apply()
            self.sparsity = sparsity_of(self.weights)
        metrics["sparsity"] = self.sparsity
