"""MLP policy for vector observations (or flattened small images, plus the mission)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .heads import ActorCriticHeads, MissionBagOfWords, orthogonal

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MlpPolicy(nn.Module):
    """Separate actor and critic MLPs (as in SB3/rl-zoo3 for classic control) over all inputs."""

    def __init__(self, cfg, observation_spec: dict, num_actions: int):
        super().__init__()
        self.keys = [k for k in ("vector", "image") if k in observation_spec]
        if not self.keys:
            raise ValueError("model=mlp needs a 'vector' or 'image' observation")
        inputs = sum(math.prod(observation_spec[k][0]) for k in self.keys)
        self.mission = MissionBagOfWords(cfg.mission_embed) if "mission" in observation_spec else None
        inputs += cfg.mission_embed if self.mission is not None else 0

        def trunk() -> nn.Sequential:
            layers, width = [], inputs
            for size in cfg.hidden_sizes:
                layers += [orthogonal(nn.Linear(width, size)), ACTIVATIONS[cfg.activation]()]
                width = size
            return nn.Sequential(*layers)

        self.actor_trunk, self.critic_trunk = trunk(), trunk()
        self.heads = ActorCriticHeads(cfg.hidden_sizes[-1], num_actions)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [obs[k].flatten(1).float() / (255.0 if k == "image" else 1.0) for k in self.keys]
        if self.mission is not None:
            parts.append(self.mission(obs["mission"]))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        logits = self.heads.actor(self.actor_trunk(x))
        value = self.heads.critic(self.critic_trunk(x)).squeeze(-1)
        return logits, value
