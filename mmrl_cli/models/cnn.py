"""CNN policy for image observations; a mission, if present, is joined as a bag of words."""

from __future__ import annotations

import torch
from torch import nn

from .heads import ActorCriticHeads, MissionBagOfWords, image_to_float, orthogonal


class CnnPolicy(nn.Module):
    """3x3 conv stack (stride 2 after the first layer) -> MLP -> actor and critic heads."""

    def __init__(self, cfg, observation_spec: dict, num_actions: int):
        super().__init__()
        if "image" not in observation_spec:
            raise ValueError("model=cnn needs an 'image' observation")
        height, width, channels = observation_spec["image"][0]
        layers, in_channels = [], channels
        for i, out_channels in enumerate(cfg.channels):
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
            in_channels = out_channels
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            conv_out = self.conv(torch.zeros(1, channels, height, width)).shape[1]
        self.mission = MissionBagOfWords(cfg.mission_embed) if "mission" in observation_spec else None
        features = conv_out + (cfg.mission_embed if self.mission is not None else 0)
        self.trunk = nn.Sequential(orthogonal(nn.Linear(features, cfg.hidden)), nn.ReLU())
        self.heads = ActorCriticHeads(cfg.hidden, num_actions)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv(image_to_float(obs["image"]))
        if self.mission is not None:
            x = torch.cat([x, self.mission(obs["mission"])], dim=1)
        return self.heads(self.trunk(x))
