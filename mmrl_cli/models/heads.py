"""Pieces the policies share: orthogonal init, actor-critic heads, image inputs (RGB pixels or
symbolic grids), mission bag-of-words."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import ActionSpace
from ..envs.tokenizer import PAD_ID, VOCAB_SIZE


def orthogonal(layer: nn.Linear, gain: float = math.sqrt(2)) -> nn.Linear:
    """Orthogonally initialise a linear layer (the usual PPO init) with zero bias."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def as_action_space(action_space: ActionSpace | int) -> ActionSpace:
    """An `ActionSpace`; a bare number means that many discrete actions."""
    return action_space if isinstance(action_space, ActionSpace) else ActionSpace.discrete(action_space)


class ActorCriticHeads(nn.Module):
    """The actor's output (logits, or Gaussian means) and a state value from one feature vector.

    With `hidden` widths, actor and critic each get their own tanh MLP first (Stable-Baselines3's
    ``net_arch=dict(pi=hidden, vf=hidden)``), so value gradients do not reshape the policy's last
    features; without, both are linear. The actor's last layer starts near zero (gain 0.01) so
    the first policy is almost uniform (or centred, for box actions). Box actions add a learned,
    state-independent log standard deviation (`log_std`, starting at 0 as in SB3 and CleanRL).
    """

    def __init__(self, features: int, action_space: ActionSpace | int, hidden: list[int] | tuple[int, ...] = ()):
        super().__init__()
        self.action_space = as_action_space(action_space)
        outputs = self.action_space.param_size
        self.actor = self.mlp(features, hidden, orthogonal(nn.Linear(hidden[-1] if hidden else features, outputs), gain=0.01))
        self.critic = self.mlp(features, hidden, orthogonal(nn.Linear(hidden[-1] if hidden else features, 1), gain=1.0))
        if not self.action_space.is_discrete:
            self.log_std = nn.Parameter(torch.zeros(outputs))

    @staticmethod
    def mlp(features: int, hidden, last: nn.Linear) -> nn.Module:
        """`last` alone, or tanh layers of widths `hidden` then `last`."""
        if not hidden:
            return last
        layers, width = [], features
        for size in hidden:
            layers += [orthogonal(nn.Linear(width, size)), nn.Tanh()]
            width = size
        return nn.Sequential(*layers, last)

    def distribution(self, params: torch.Tensor):
        """The action distribution of the actor's output `params` (see `mmrl_cli.distributions`)."""
        return self.action_space.distribution(params, getattr(self, "log_std", None))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(features), self.critic(features).squeeze(-1)


class ActorCritic(nn.Module):
    """What every policy offers besides ``forward(obs) -> (actor output, value)``: the action
    distribution of an actor output (its `heads` say which). Sampling, losses and evaluation
    all go through `distribution`."""

    heads: ActorCriticHeads

    @property
    def action_space(self) -> ActionSpace:
        """The action space the policy acts in."""
        return self.heads.action_space

    def distribution(self, params: torch.Tensor):
        """The action distribution of actor output `params`."""
        return self.heads.distribution(params)


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


# A symbolic image (observation key ``grid``) is uint8: each channel holds one of 256 category ids.
GRID_VALUES = 256


class GridEmbedding(nn.Module):
    """Embeds each channel's category id of a symbolic image (MiniGrid: object, colour, state).

    (B, H, W, C) uint8 -> (B, C * dim, H, W) float: one learned vector per (channel, id), so
    "door" and "key" are different directions, not the numbers 4 and 5 divided by 255.
    """

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(channels * GRID_VALUES, dim)
        self.register_buffer("offsets", torch.arange(channels) * GRID_VALUES, persistent=False)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = self.embed(grid.long() + self.offsets)  # (B, H, W, C, dim)
        return x.flatten(3).permute(0, 3, 1, 2)


class ImageInput(nn.Module):
    """The image observation as a float feature map (B, channels, H, W).

    RGB pixels (``image``) are scaled to [0, 1]; a symbolic ``grid`` goes through `GridEmbedding`,
    or with ``grid_embed=0`` its ids are fed raw as floats (the MiniGrid docs' SB3 recipe).
    """

    def __init__(self, observation_spec: dict, grid_embed: int):
        super().__init__()
        self.key = "grid" if "grid" in observation_spec else "image"
        if self.key not in observation_spec:
            raise ValueError("this model needs an 'image' or 'grid' observation")
        self.height, self.width, channels = observation_spec[self.key][0]
        self.grid = GridEmbedding(channels, grid_embed) if self.key == "grid" and grid_embed > 0 else None
        self.channels = channels * grid_embed if self.grid is not None else channels

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.grid is not None:
            return self.grid(obs["grid"])
        if self.key == "grid":  # raw ids as numbers
            return obs["grid"].permute(0, 3, 1, 2).float()
        return image_to_float(obs["image"])


def vector_size(observation_spec: dict) -> int:
    """Width of the ``vector`` observation (0 when there is none)."""
    return observation_spec["vector"][0][0] if "vector" in observation_spec else 0
