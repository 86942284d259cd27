"""MLP policy for vector observations (or flattened small images, plus the mission)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import ActionSpace

from ..text import tokenizer_for
from .heads import ActorCritic, ActorCriticHeads, GridEmbedding, MissionBagOfWords, actor_gain, memory_of

# CPU tensors with at least this many elements take tanh through sigmoid (see `tanh`).
TANH_VIA_SIGMOID_FROM = 16_384


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x); on large CPU tensors computed as ``2 sigmoid(2x) - 1`` (absolute error < 3e-7).

    torch's CPU tanh costs ~4.6 ns per element on this project's machine against ~1.3 for
    sigmoid, and the tanh of a PPO minibatch (256 x 2 x 64) are the largest kernels of the MLP's
    forward. On small tensors (a rollout step of 8 envs) one kernel beats three.
    """
    if x.device.type != "cpu" or x.numel() < TANH_VIA_SIGMOID_FROM:
        return torch.tanh(x)
    return torch.sigmoid(2 * x) * 2 - 1


# Each activation and its backward, written with its output y: ``dx = dy * (1 - y^2)`` for
# tanh, ``dx = dy * (y > 0)`` for relu.
ACTIVATIONS = {
    "tanh": (tanh, torch.ops.aten.tanh_backward),
    "relu": (torch.relu, lambda d_output, output: torch.ops.aten.threshold_backward(d_output, output, 0)),
}


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


class MlpPolicy(ActorCritic):
    """Separate actor and critic MLPs over all inputs (`hidden_sizes` each), run as a pair.

    Besides autograd, the policy has a hand-written backward (`backward_from_outputs`): at
    these sizes a training step is a few dozen small kernels, and autograd's bookkeeping per
    kernel costs more than the arithmetic, so PPO uses this instead when it can (fp32, no
    mission embedding). A test checks it against autograd.
    """

    # Parts that fine-tuning settings name (models/finetune.py); the rest is "heads".
    PARTS = {"vision": ("grid",), "text": ("mission",)}

    def __init__(self, cfg, observation_spec: dict, action_space: ActionSpace | int):
        super().__init__()
        self.keys = [k for k in ("vector", "image", "grid") if k in observation_spec]
        if not self.keys:
            raise ValueError("model=mlp needs a 'vector', 'image' or 'grid' observation")
        self.grid = GridEmbedding(observation_spec["grid"][0][2], cfg.grid_embed) if "grid" in observation_spec else None
        inputs = sum(math.prod(observation_spec[k][0]) * (cfg.grid_embed if k == "grid" else 1) for k in self.keys)
        self.mission = MissionBagOfWords(cfg.mission_embed, tokenizer_for(cfg)) if "mission" in observation_spec else None
        inputs += cfg.mission_embed if self.mission is not None else 0
        self.activation, self.activation_backward = ACTIVATIONS[cfg.activation]
        # model.memory: an LSTM or GRU over the inputs, read by both MLPs (SB3's RecurrentPPO: features -> LSTM -> net_arch)
        self.memory, inputs = memory_of(cfg, inputs)
        widths = [inputs, *cfg.hidden_sizes]
        self.layers = nn.ModuleList(PairedLinear(width, size) for width, size in zip(widths, widths[1:]))
        self.heads = ActorCriticHeads(widths[-1], action_space, actor_gain=actor_gain(self.memory))

    @property
    def analytic_backward(self) -> bool:
        """True when `backward_from_outputs` reaches every parameter (not the mission or grid embeddings,
        nor a Gaussian's log standard deviation, nor a recurrent core)."""
        return self.mission is None and self.grid is None and self.memory is None and self.action_space.is_discrete

    def features(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The encoder of the recurrent contract (`ActorCritic`): the flat inputs."""
        return self.inputs(obs)

    def head(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both MLPs and their linear heads on `x` (the inputs, or the recurrent core's output)."""
        logits, values, _ = self.tower(x)
        return logits, values

    def inputs(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One flat float vector per observation: the vector, the image (scaled to [0, 1]), the embedded
        grid, the mission."""
        parts = []
        for key in self.keys:
            if key == "image":
                parts.append(obs[key].flatten(1).float() / 255.0)
            elif key == "grid":
                parts.append(self.grid(obs[key]).flatten(1))
            else:
                parts.append(obs[key].flatten(1))
        if self.mission is not None:
            parts.append(self.mission(obs["mission"]))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.memory is not None:  # one step from the zero state (see `ActorCritic`)
            return super().forward(obs)
        logits, values, _ = self.forward_saving_activations(obs)
        return logits, values

    def forward_saving_activations(self, obs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Logits, values and every layer's output (the input first), as `backward_from_outputs` needs."""
        return self.tower(self.inputs(obs))

    def tower(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        """`forward_saving_activations` from the flat inputs `x` on."""
        hidden = x.expand(2, *x.shape)  # (actor, critic) x batch x features
        saved = [hidden]
        for layer in self.layers:
            hidden = self.activation(layer(hidden))
            saved.append(hidden)
        actor, critic = self.heads.actor, self.heads.critic
        logits = torch.nn.functional.linear(hidden[0], actor.weight, actor.bias)
        values = torch.nn.functional.linear(hidden[1], critic.weight, critic.bias).squeeze(-1)
        return logits, values, saved

    @torch.no_grad()
    def backward_from_outputs(self, saved: list, d_logits: torch.Tensor, d_values: torch.Tensor) -> None:
        """Set every parameter's ``.grad`` (not accumulated) from a loss's gradient w.r.t. logits and values.

        The chain rule through `forward_saving_activations`, layer by layer from the heads down:
        for ``y = act(x W + b)``, ``dW = x^T g``, ``db = sum(g)`` and ``dx = g W^T`` with
        ``g = act'(y) * dy``.
        """
        actor, critic = self.heads.actor, self.heads.critic
        top = saved[-1]
        actor.weight.grad = d_logits.t() @ top[0]
        actor.bias.grad = d_logits.sum(0)
        critic.weight.grad = d_values.unsqueeze(0) @ top[1]
        critic.bias.grad = d_values.sum(0, keepdim=True)
        d_hidden = torch.stack([d_logits @ actor.weight, torch.outer(d_values, critic.weight[0])])
        for index in reversed(range(len(self.layers))):
            layer = self.layers[index]
            d_pre = self.activation_backward(d_hidden, saved[index + 1])
            layer.weight.grad = torch.bmm(saved[index].transpose(1, 2), d_pre)
            layer.bias.grad = d_pre.sum(1, keepdim=True)
            if index:
                d_hidden = torch.bmm(d_pre, layer.weight.transpose(1, 2))
