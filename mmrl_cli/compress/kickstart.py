"""Kickstarting (Schmitt et al. 2018): RL from scratch plus an annealed pull towards a teacher.

The student's loss is its algorithm's RL loss plus ``coef * KL(teacher || student)`` on the
states of each minibatch (the teacher labels each rollout once, in `on_rollout`); ``coef`` falls linearly from `compression.coef` to 0 over
`compression.anneal_steps` env steps, after which the student learns from rewards alone (and may
outgrow the teacher). The term plugs into any algorithm through `GradientStep.extra_losses`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..algos.distill import distillation_kl, label_with_teacher


def annealed(coef: float, steps: int, anneal_steps: int) -> float:
    """The distillation weight after `steps` env steps: linear from `coef` to 0 at `anneal_steps`."""
    return coef * max(0.0, 1.0 - steps / anneal_steps)


class Kickstart:
    """The annealed distillation term (an extra loss) and the callback that anneals it."""

    def __init__(self, cfg, teacher: nn.Module, steps_done: int):
        self.cfg, self.teacher = cfg, teacher
        self.coef = annealed(cfg.coef, steps_done, cfg.anneal_steps)

    def loss(self, logits: torch.Tensor, values: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """``loss_kickstart`` for this minibatch (nothing is computed once the weight is 0)."""
        if self.coef == 0.0:
            return {"kickstart_coef": logits.new_zeros(())}
        teacher_logits = batch.get("teacher_logits")  # labelled once per rollout by `on_rollout`
        if teacher_logits is None:  # a batch from elsewhere: ask the teacher now
            with torch.no_grad():
                teacher_logits, _ = self.teacher(batch["obs"])
        kl = distillation_kl(logits, teacher_logits, self.cfg.temperature)
        return {"loss_kickstart": self.coef * kl, "kickstart_kl": kl.detach(), "kickstart_coef": logits.new_tensor(self.coef)}

    def on_rollout(self, rollout) -> None:
        """Label the new rollout with the teacher's logits once (every epoch's minibatches reuse them)."""
        if self.coef > 0.0:
            label_with_teacher(rollout, self.teacher, values=False)

    def on_update(self, progress, metrics: dict) -> None:
        """Anneal the weight to the env steps done so far."""
        self.coef = annealed(self.cfg.coef, progress.steps, self.cfg.anneal_steps)
