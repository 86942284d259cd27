"""Pieces the policies share: orthogonal init, actor-critic heads, mission bag-of-words."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..envs.tokenizer import PAD_ID, VOCAB_SIZE


def orthogonal(layer: nn.Linear, gain: float = math.sqrt(2)) -> nn.Linear:
    """Orthogonally initialise a linear layer (the usual PPO init) with zero bias."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCriticHeads(nn.Module):
    """Action logits and a state value from one feature vector.

    The actor's last layer starts near zero (gain 0.01) so the first policy is almost uniform.
    """

    def __init__(self, features: int, num_actions: int):
        super().__init__()
        self.actor = orthogonal(nn.Linear(features, num_actions), gain=0.01)
        self.critic = orthogonal(nn.Linear(features, 1), gain=1.0)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(features), self.critic(features).squeeze(-1)


class MissionBagOfWords(nn.Module):
    """Mean of the instruction's token embeddings (padding ignored): a cheap text encoder."""

    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim, padding_idx=PAD_ID)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD_ID).unsqueeze(-1).float()
        return (self.embed(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def image_to_float(image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float in [0, 1]."""
    return image.permute(0, 3, 1, 2).float().div_(255.0)
