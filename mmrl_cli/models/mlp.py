"""MLP policy for vector observations (or flattened small images, plus the mission)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .heads import ActorCriticHeads, MissionBagOfWords

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class PairedLinear(nn.Module):
    """Two independent linear layers (actor's and critic's) evaluated in one batched matmul.

    Separate actor and critic MLPs are what SB3/rl-zoo3 use on classic control; running the
    pair as one `baddbmm` halves the number of small kernels in every forward and backward,
    which is most of the cost at these sizes. Input (B, in) is shared; (2, B, in) is per member.
    """

    def __init__(self, inputs: int, outputs: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2, inputs, outputs))
        self.bias = nn.Parameter(torch.zeros(2, 1, outputs))
        for member in range(2):  # orthogonal init of each member, as for nn.Linear
            nn.init.orthogonal_(self.weight.data[member].T, gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.expand(2, *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class MlpPolicy(nn.Module):
    """Separate actor and critic MLPs over all inputs (`hidden_sizes` each), run as a pair."""

    def __init__(self, cfg, observation_spec: dict, num_actions: int):
        super().__init__()
        self.keys = [k for k in ("vector", "image") if k in observation_spec]
        if not self.keys:
            raise ValueError("model=mlp needs a 'vector' or 'image' observation")
        inputs = sum(math.prod(observation_spec[k][0]) for k in self.keys)
        self.mission = MissionBagOfWords(cfg.mission_embed) if "mission" in observation_spec else None
        inputs += cfg.mission_embed if self.mission is not None else 0
        layers, width = [], inputs
        for size in cfg.hidden_sizes:
            layers += [PairedLinear(width, size), ACTIVATIONS[cfg.activation]()]
            width = size
        self.trunk = nn.Sequential(*layers)
        self.heads = ActorCriticHeads(width, num_actions)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [obs[k].flatten(1).float() / 255.0 if k == "image" else obs[k].flatten(1) for k in self.keys]
        if self.mission is not None:
            parts.append(self.mission(obs["mission"]))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        actor_features, critic_features = self.trunk(x)
        return self.heads.actor(actor_features), self.heads.critic(critic_features).squeeze(-1)
