"""Pieces the policies share: orthogonal init, actor-critic heads, image inputs (RGB pixels or
symbolic grids), mission bag-of-words."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import ActionSpace


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
    the first policy is almost uniform (or centred, for box actions); behind a recurrent core it
    starts at `RECURRENT_ACTOR_GAIN` (``actor_gain``, see there). Box actions add a learned,
    state-independent log standard deviation (`log_std`, starting at 0 as in SB3 and CleanRL).
    """

    def __init__(self, features: int, action_space: ActionSpace | int, hidden: list[int] | tuple[int, ...] = (),
                 actor_gain: float = 0.01):
        super().__init__()
        self.action_space = as_action_space(action_space)
        outputs = self.action_space.param_size
        self.actor = self.mlp(features, hidden, orthogonal(nn.Linear(hidden[-1] if hidden else features, outputs), gain=actor_gain))
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


# `model.memory`: the recurrent core a policy may have between its features and its heads.
MEMORY_KINDS = ("none", "lstm", "gru")
GATES = {"lstm": 4, "gru": 3}  # gate blocks per core: LSTM i, f, g, o; GRU r, z, n (torch's order)


# Initial gain of the actor's output layer of a recurrent policy (a memoryless one: 0.01). What
# that layer reads is bounded in (-1, 1) (the core's h, or tanh layers after it), so at gain 1
# the first policy is still close to uniform (logits of order 0.1); and the gradient that teaches
# the core what to remember flows back through this layer, 100 times stronger than at 0.01. With
# 0.01, PPO with an LSTM did not learn to use a cue 5-7 steps back in up to 400k steps
# (mmrl/MemoryCue-v0, 8 runs); with 1 it did (docs/benchmarks.md, "Recurrent memory").
RECURRENT_ACTOR_GAIN = 1.0

# Initial bias of the gate that keeps the state (LSTM forget gate, GRU update gate): with 0, a
# random core halves what it remembers every step; with 1 it keeps 73% (Gers et al. 2000,
# Jozefowicz et al. 2015), so a cue seen 10 steps earlier still reaches the gradient.
KEEP_GATE_BIAS = 1.0


class RecurrentCore(nn.Module):
    """An LSTM or GRU between a policy's features and its actor-critic heads (`model.memory`).

    The state of a batch is one float32 tensor of shape (batch, `state_size`): the hidden state h
    for a GRU, h and the cell state c side by side for an LSTM, so a rollout stores it, indexes it
    by env and resets it like any other tensor. Where an episode starts (``episode_starts`` 1)
    the state is zeroed before the step (CleanRL's ``(1 - done) * state``, SB3's
    ``episode_starts``). The gates are torch's (`nn.LSTM`/`nn.GRU` parameter layout, checked
    against them by a test); weights start orthogonal (gain 1) as in CleanRL's ppo_atari_lstm,
    biases at 0 but the keeping gate's (`KEEP_GATE_BIAS`). `sequence` projects the inputs of all
    T steps in one matrix product and runs only the recurrence step by step.
    """

    def __init__(self, kind: str, inputs: int, size: int):
        super().__init__()
        if kind not in GATES:
            raise ValueError(f"model.memory: expected one of {', '.join(MEMORY_KINDS)}, got {kind!r}")
        self.kind, self.size = kind, size
        gates = GATES[kind] * size
        self.weight_ih = nn.Parameter(torch.empty(gates, inputs))
        self.weight_hh = nn.Parameter(torch.empty(gates, size))
        self.bias_ih = nn.Parameter(torch.zeros(gates))
        self.bias_hh = nn.Parameter(torch.zeros(gates))
        nn.init.orthogonal_(self.weight_ih, 1.0)
        nn.init.orthogonal_(self.weight_hh, 1.0)
        with torch.no_grad():  # the gate that keeps the state (LSTM forget, GRU update) starts at sigmoid(1) = 0.73
            self.bias_ih[size : 2 * size] = KEEP_GATE_BIAS

    @property
    def state_size(self) -> int:
        """Width of the state of one env: h (GRU) or [h | c] (LSTM)."""
        return 2 * self.size if self.kind == "lstm" else self.size

    @staticmethod
    def reset(state: torch.Tensor, episode_starts: torch.Tensor) -> torch.Tensor:
        """`state` zeroed in the rows where an episode starts."""
        return state * (1.0 - episode_starts.to(state.dtype)).unsqueeze(-1)

    def cell(self, projected: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the inputs' projection ``x W_ih^T + b_ih``: (output h, new state), in float32."""
        h = state[:, : self.size]
        recurrent = nn.functional.linear(h, self.weight_hh, self.bias_hh)
        if self.kind == "lstm":
            i, f, g, o = (projected + recurrent).float().chunk(4, dim=1)
            c = torch.sigmoid(f) * state[:, self.size:] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return h, torch.cat([h, c], dim=1)
        x_r, x_z, x_n = projected.float().chunk(3, dim=1)
        h_r, h_z, h_n = recurrent.float().chunk(3, dim=1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * h.float()
        return h, h

    def step(self, x: torch.Tensor, state: torch.Tensor, episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of a batch: features (B, F), state (B, S), episode starts (B,) -> (output (B, H), new state)."""
        return self.cell(nn.functional.linear(x, self.weight_ih, self.bias_ih), self.reset(state, episode_starts))

    def sequence(self, x: torch.Tensor, state: torch.Tensor,
                 episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T steps of a batch: features (T, B, F), the state before the first step (B, S), episode starts
        (T, B) -> (outputs (T, B, H), state after the last step)."""
        projected = nn.functional.linear(x, self.weight_ih, self.bias_ih)  # every step's input projection at once
        outputs = []
        for t in range(len(x)):
            out, state = self.cell(projected[t], self.reset(state, episode_starts[t]))
            outputs.append(out)
        return torch.stack(outputs), state


def memory_of(cfg, features: int) -> tuple[RecurrentCore | None, int]:
    """The recurrent core `cfg.memory` asks for over `features` inputs (None for ``none``) and the width
    of what the heads then read."""
    kind = getattr(cfg, "memory", "none")
    if kind == "none":
        return None, features
    return RecurrentCore(kind, features, cfg.memory_size), cfg.memory_size


def actor_gain(memory: RecurrentCore | None) -> float:
    """The initial gain of the actor's output layer: 0.01, or `RECURRENT_ACTOR_GAIN` behind a core."""
    return 0.01 if memory is None else RECURRENT_ACTOR_GAIN


class ActorCritic(nn.Module):
    """What every policy offers besides ``forward(obs) -> (actor output, value)``: the action
    distribution of an actor output (its `heads` say which), and the recurrent contract.

    Sampling, losses and evaluation all go through `distribution`. A policy is ``features(obs)``
    (its encoder), an optional `RecurrentCore` (``memory``, from ``model.memory``) and ``head(x)
    -> (actor output, value)``. The contract for state (every policy has it; a memoryless one has
    a state of width 0 and ignores it):

    - ``recurrent``: True when the policy has memory;
    - ``initial_state(batch, device)``: the zero state of `batch` envs, (batch, state width);
    - ``step(obs, state, episode_starts) -> (params, value, new_state)``: one step of a batch,
      the state zeroed first where ``episode_starts`` is 1 (the observation is an episode's first);
    - ``sequence(obs, state, episode_starts) -> (params, values, final_state)``: T steps of B envs
      (observations (T, B, ...), starts (T, B), `state` the state before the first step); params
      and values come flat, time-major (row t * B + b), as `RolloutBuffer.flat` orders a rollout.

    ``forward(obs)`` of a recurrent policy is one step from the zero state (every observation an
    episode's first): what shape checks and speed measurements need, never what acting uses.
    """

    heads: ActorCriticHeads
    memory: RecurrentCore | None  # set by every policy (None: no memory); not a class default, which would hide the module

    @property
    def action_space(self) -> ActionSpace:
        """The action space the policy acts in."""
        return self.heads.action_space

    def distribution(self, params: torch.Tensor):
        """The action distribution of actor output `params`."""
        return self.heads.distribution(params)

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's output: what the recurrent core (or, without memory, the heads) reads."""
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor output, value) from the core's output (or the features)."""
        return self.heads(x)

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(obs)
        if self.memory is not None:
            x = self.memory.step(x, self.initial_state(len(x), x.device), torch.ones(len(x), device=x.device))[0]
        return self.head(x)

    @property
    def recurrent(self) -> bool:
        """True when the policy carries a state from step to step (``model.memory`` lstm or gru)."""
        return self.memory is not None

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The zero state of `batch` envs: (batch, state width), width 0 without memory."""
        width = self.memory.state_size if self.memory is not None else 0
        return torch.zeros(batch, width, device=device)

    def step(self, obs: dict[str, torch.Tensor], state: torch.Tensor,
             episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of a batch of envs: (actor output, value, new state); see the class docstring."""
        x = self.features(obs)
        if self.memory is None:
            return (*self.head(x), state)
        x, state = self.memory.step(x, state, episode_starts)
        return (*self.head(x), state)

    def sequence(self, obs: dict[str, torch.Tensor], state: torch.Tensor,
                 episode_starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T steps of B envs from `state`: (actor outputs, values) flat time-major, and the final state."""
        steps, batch = episode_starts.shape[:2]
        x = self.features({k: v.flatten(0, 1) for k, v in obs.items()})
        if self.memory is not None:
            x, state = self.memory.sequence(x.reshape(steps, batch, -1), state, episode_starts)
            x = x.flatten(0, 1)
        return (*self.head(x), state)


class MissionBagOfWords(nn.Module):
    """Mean of the instruction's token embeddings (padding ignored): a cheap text encoder over
    the ids of `tokenizer` (the model's: its vocabulary size and padding id)."""

    def __init__(self, dim: int, tokenizer):
        super().__init__()
        self.pad_id = tokenizer.pad_id
        self.embed = nn.Embedding(tokenizer.vocab_size, dim, padding_idx=tokenizer.pad_id)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).unsqueeze(-1).float()
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
