"""Action spaces and the action distributions every part of mmrl acts through.

One contract for sampling (rollouts), losses (PPO, A2C, distillation, behaviour cloning) and
evaluation (argmax or sampled episodes, GIFs): a policy's actor output (``params``) becomes a
distribution with `ActionSpace.distribution(params, log_std)`, which offers ``sample``,
``mode``, ``log_prob``, ``entropy`` and ``to_env`` (what the env receives). Nothing else
branches on the kind of action space.

- `Categorical` (Discrete actions): ``params`` are logits.
- `DiagGaussian` (Box actions): ``params`` are the means, the log standard deviations are a
  state-independent learned vector (as Stable-Baselines3's and CleanRL's PPO). What is stored
  in the rollout is the Gaussian sample itself; the env receives it clipped to the bounds
  (``squash=clip``, SB3's default: the log-probability is that of the unclipped sample) or
  squashed by tanh into them (``squash=tanh``: the log-probability includes the change of
  variables, as SAC writes it).
"""

from __future__ import annotations

import dataclasses
import math

import torch

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class ActionSpace:
    """What an env accepts: ``discrete`` (``n`` actions) or ``box`` (``shape`` within ``low``..``high``)."""

    kind: str  # "discrete" | "box"
    n: int = 0  # number of discrete actions
    shape: tuple[int, ...] = ()  # shape of one box action
    low: tuple[float, ...] = ()  # per-dimension bounds of a box action (flattened)
    high: tuple[float, ...] = ()
    squash: str = "clip"  # box actions: how a Gaussian sample is brought inside the bounds (clip | tanh)

    @classmethod
    def discrete(cls, n: int) -> ActionSpace:
        """`n` discrete actions 0..n-1."""
        return cls("discrete", n=int(n))

    @classmethod
    def box(cls, shape, low, high, squash: str = "clip") -> ActionSpace:
        """Continuous actions of `shape` with finite bounds `low`..`high` (scalars or per dimension)."""
        size = math.prod(shape)
        low = tuple(float(v) for v in torch.as_tensor(low, dtype=torch.float64).expand(size).flatten().tolist())
        high = tuple(float(v) for v in torch.as_tensor(high, dtype=torch.float64).expand(size).flatten().tolist())
        if not all(math.isfinite(v) for v in low + high):
            raise ValueError("infinite action bounds (mmrl needs a finite low and high for every action dimension)")
        return cls("box", shape=tuple(int(s) for s in shape), low=low, high=high, squash=squash)

    @property
    def is_discrete(self) -> bool:
        """True for Discrete actions."""
        return self.kind == "discrete"

    @property
    def param_size(self) -> int:
        """Width of the actor's output: logits per action, or one mean per action dimension."""
        return self.n if self.is_discrete else math.prod(self.shape)

    @property
    def storage(self) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype of one stored action (a rollout or a demonstration keeps these)."""
        return ((), torch.int64) if self.is_discrete else (self.shape, torch.float32)

    def distribution(self, params: torch.Tensor, log_std: torch.Tensor | None = None):
        """The action distribution of actor output `params` (and `log_std` for box actions)."""
        if self.is_discrete:
            return Categorical(params)
        return DiagGaussian(params, log_std, self)


class Categorical:
    """A categorical distribution over discrete actions, from logits (computed in fp32)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self.log_p = torch.log_softmax(logits.float(), dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One action per row, drawn with `generator` (reproducible apart from torch's global RNG).

        Inverse-CDF sampling: the action is the number of cumulative probabilities below a uniform
        draw. Same distribution as torch.multinomial at a fifth of its cost on small batches
        (multinomial's checks and set-up dominate there).
        """
        uniform = torch.rand(len(self.log_p), 1, generator=generator, device=self.log_p.device)
        return (self.log_p.exp().cumsum(-1) < uniform).sum(-1).clamp_(max=self.log_p.shape[-1] - 1)

    def mode(self) -> torch.Tensor:
        """The most likely action of each row."""
        return self.log_p.argmax(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-probability of `actions` (int64, one per row)."""
        return self.log_p.gather(1, actions.unsqueeze(1)).squeeze(1)

    def entropy(self) -> torch.Tensor:
        """Entropy of each row."""
        return -(self.log_p.exp() * self.log_p).sum(-1)

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """Discrete actions go to the env as they are."""
        return actions


class DiagGaussian:
    """A diagonal Gaussian over box actions: per-row means, a shared learned log std."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor, space: ActionSpace):
        self.space = space
        self.mean = mean.float().reshape(len(mean), -1)
        self.log_std = log_std.float().expand_as(self.mean)
        self.std = self.log_std.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One raw (unbounded) action per row, drawn with `generator`."""
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.reshape(self.mean + self.std * noise)

    def mode(self) -> torch.Tensor:
        """The mean action of each row."""
        return self.reshape(self.mean)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """Log-density of raw actions (summed over dimensions; tanh: with the change of variables)."""
        x = actions.float().reshape(self.mean.shape)
        log_density = (-0.5 * ((x - self.mean) / self.std).square() - self.log_std - LOG_SQRT_2PI).sum(-1)
        if self.space.squash == "tanh":  # d tanh(x)/dx = 1 - tanh^2(x), written stably
            log_density = log_density - (2 * (math.log(2) - x - torch.nn.functional.softplus(-2 * x))).sum(-1)
        return log_density

    def entropy(self) -> torch.Tensor:
        """Entropy of the Gaussian (before clipping or squashing) of each row."""
        return (0.5 + LOG_SQRT_2PI + self.log_std).sum(-1)

    def to_env(self, actions: torch.Tensor) -> torch.Tensor:
        """What the env receives: the raw action clipped to the bounds, or squashed into them by tanh."""
        low = torch.tensor(self.space.low, device=actions.device).reshape(self.space.shape)
        high = torch.tensor(self.space.high, device=actions.device).reshape(self.space.shape)
        if self.space.squash == "tanh":
            return low + (torch.tanh(actions) + 1) * (0.5 * (high - low))
        return torch.maximum(torch.minimum(actions, high), low)

    def reshape(self, flat: torch.Tensor) -> torch.Tensor:
        """(rows, dims) -> (rows, *action shape)."""
        return flat.reshape(len(flat), *self.space.shape)


def act(dist, deterministic: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """The action to take: the distribution's mode (`deterministic`) or a sample drawn with `generator`."""
    return dist.mode() if deterministic else dist.sample(generator)


def sample_actions(dist, deterministic: bool = False,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Actions from `dist` (its mode when `deterministic`, else a draw with `generator`) and their
    log-probabilities: what a rollout stores."""
    actions = act(dist, deterministic, generator)
    return actions, dist.log_prob(actions)


def remember_action(policy, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """A recurrent policy's state after acting: unchanged, or with the action just taken written in for a
    policy whose state holds it (``policy.remember_action``: a world model's latent state needs the
    previous action at its next step, `algo=dreamer`)."""
    hook = getattr(policy, "remember_action", None)
    return state if hook is None else hook(state, actions)
