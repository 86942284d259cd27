"""Naming the target: a bottleneck between the instruction's sentence vector and the policy.

``model.text_readout=names`` (with a pretrained text tower): linear classifiers read the
sentence vector and name what the instruction asks for, one per label the env gives (the
built-in task: the target's colour and its object type, ``model.name_classes``); FiLM then reads
what they name (each label's most likely class as a one-hot, or with
``model.name_readout=probabilities`` their class probabilities) instead of the raw vector. The
classifiers learn from an auxiliary naming loss (cross-entropy against the labels the env
records beside each step, weight ``model.naming_coef``), not from RL: their output is detached
from the policy's gradients, so they stay what a probe of the vector would be. The policy thus
conditions on *what* is named, never on how it was worded; an instruction in words no training
instruction used is understood exactly as far as the pretrained vector places it near the
training words (the point of transfer: a random tower of the same shape names such words at
chance). Hermann et al. 2017 and UNREAL (Jaderberg et al. 2017) train auxiliary heads the same
way; the bottleneck is a concept bottleneck (Koh et al. 2020).

The loss plugs into any on-policy algorithm through `GradientStep.extra_losses`; the labels come
from the env's step fields (``env.label_classes``), copied into each rollout's ``labels`` once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class NamingHead(nn.Module):
    """Sentence vectors (B, width) -> one set of logits per named label; `readout` -> what the policy reads."""

    def __init__(self, width: int, classes: list[int], onehot: bool = True):
        super().__init__()
        self.classifiers = nn.ModuleList(nn.Linear(width, n) for n in classes)
        self.size, self.onehot = sum(classes), onehot

    def forward(self, vectors: torch.Tensor) -> list[torch.Tensor]:
        return [classifier(vectors) for classifier in self.classifiers]

    def readout(self, vectors: torch.Tensor) -> torch.Tensor:
        """What the policy sees, every label joined, with no gradient back to the classifiers (the
        naming loss alone trains them): each label's most likely class as a one-hot (`onehot`: an
        instruction in new words then gives the policy an input of the kind it trained on, a
        definite name, rather than a flatter distribution it never saw), or its class probabilities."""
        outputs = []
        for logits in self(vectors):
            if self.onehot:
                outputs.append(F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype))
            else:
                outputs.append(logits.softmax(-1))
        return torch.cat(outputs, dim=-1).detach()


class NamingLoss:
    """The auxiliary naming loss (an extra loss) and the rollout hook that labels each rollout."""

    def __init__(self, policy: nn.Module, fields: list[str], coef: float):
        self.policy, self.fields, self.coef = policy, fields, coef

    def loss(self, logits: torch.Tensor, values: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """``loss_naming`` for this minibatch, and each label's accuracy."""
        predictions = self.policy.naming_logits(batch["obs"])
        terms, total = {}, logits.new_zeros(())
        for field, predicted in zip(self.fields, predictions):
            target = batch[field].reshape(-1)
            predicted = predicted.reshape(len(target), -1).float()
            total = total + F.cross_entropy(predicted, target)
            terms[f"naming_accuracy_{field}"] = (predicted.argmax(-1) == target).float().mean().detach()
        terms["loss_naming"] = self.coef * total
        return terms

    def on_rollout(self, rollout) -> None:
        """Copy the env's labels of every step into the rollout's per-transition labels."""
        for field in self.fields:
            rollout.labels[field] = rollout.step_fields[field].flatten()


def attach_naming(model_cfg, policy: nn.Module, algo, env) -> list:
    """Give the algorithm the naming loss when the policy names its instructions; returns the
    callbacks it needs (the hook that labels rollouts), none otherwise. Raises ValueError (one
    line) when the env gives no labels of the configured sizes."""
    if getattr(policy, "names", None) is None:
        return []
    classes = dict(getattr(env, "label_classes", {}))
    if list(classes.values()) != list(model_cfg.name_classes):
        raise ValueError(f"model.text_readout=names: the env labels {classes or 'nothing'}, "
                         f"but model.name_classes={list(model_cfg.name_classes)}")
    naming = NamingLoss(policy, list(classes), model_cfg.naming_coef)
    algo.gradient.extra_losses.append(naming.loss)
    return [naming]
