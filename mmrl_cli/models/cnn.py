"""CNN policy for image observations (RGB pixels or symbolic grids); a mission, if present, is
joined as a bag of words and a ``vector`` observation (e.g. MiniGrid's direction) as is."""

from __future__ import annotations

import torch
from torch import nn

from ..distributions import ActionSpace

from ..text import tokenizer_for
from .heads import ActorCritic, ActorCriticHeads, ImageInput, MissionBagOfWords, actor_gain, memory_of, orthogonal, vector_size


class CnnPolicy(ActorCritic):
    """Conv stack (`channels`, `kernel_size`, `strides`) -> one hidden layer -> (`memory`: an LSTM or
    GRU) -> actor and critic heads (linear, or each its own MLP of widths `head_hidden`)."""

    # Parts that fine-tuning settings name (models/finetune.py); the rest is "heads".
    PARTS = {"vision": ("pixels", "conv"), "text": ("mission",)}

    def __init__(self, cfg, observation_spec: dict, action_space: ActionSpace | int):
        super().__init__()
        self.pixels = ImageInput(observation_spec, cfg.grid_embed)
        layers, in_channels = [], self.pixels.channels
        for out_channels, stride in zip(cfg.channels, cfg.strides):
            conv = nn.Conv2d(in_channels, out_channels, cfg.kernel_size, stride=stride, padding=(cfg.kernel_size - 1) // 2)
            nn.init.orthogonal_(conv.weight, 2 ** 0.5)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU()]
            in_channels = out_channels
        self.conv = nn.Sequential(*layers, nn.Flatten())
        try:
            with torch.no_grad():
                conv_out = self.conv(torch.zeros(1, self.pixels.channels, self.pixels.height, self.pixels.width)).shape[1]
        except RuntimeError:
            raise ValueError(f"model.channels: a {self.pixels.height}x{self.pixels.width} image is too small for "
                             f"{len(cfg.channels)} conv layers of kernel {cfg.kernel_size}, strides {cfg.strides}") from None
        self.conv_spatial = conv_out // in_channels  # H x W of the last conv's output (channel-major flatten)
        self.mission = MissionBagOfWords(cfg.mission_embed, tokenizer_for(cfg)) if "mission" in observation_spec else None
        self.has_vector = "vector" in observation_spec
        features = conv_out + (cfg.mission_embed if self.mission is not None else 0) + vector_size(observation_spec)
        self.trunk = nn.Sequential(orthogonal(nn.Linear(features, cfg.hidden)), nn.ReLU())
        self.memory, width = memory_of(cfg, cfg.hidden)  # model.memory: a recurrent core between trunk and heads
        self.heads = ActorCriticHeads(width, action_space, cfg.head_hidden, actor_gain(self.memory))

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.conv(self.pixels(obs))]
        if self.mission is not None:
            parts.append(self.mission(obs["mission"]))
        if self.has_vector:
            parts.append(obs["vector"])
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.trunk(x)
