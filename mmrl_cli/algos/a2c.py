"""Synchronous advantage actor-critic, A2C (Mnih et al. 2016, synchronous as in OpenAI Baselines).

One gradient step per rollout: the rollout (by default 5 steps of every env) is one batch, its
advantages are n-step returns minus values (GAE with lambda = 1, as Stable-Baselines3), and the
optimiser is RMSprop (alpha 0.99, eps 1e-5), the reference defaults of SB3 and Baselines.
Everything else (rollouts, the gradient step with its checks, checkpoints) is shared with PPO.
A recurrent policy (`model.memory`) replays every env's rollout as one sequence from the state
stored at its start.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import Distributed
from ..rollout import RolloutBuffer
from .base import OnPolicy
from .gradient import GradientStep, TrainingClock, explained_variance, mean_metrics, scheduled
from .ppo import normalized
from ..models.finetune import parameter_groups


def a2c_loss(dist, values: torch.Tensor, batch: dict, normalize_advantages: bool,
             vf_coef: float, ent_coef: float) -> dict[str, torch.Tensor]:
    """A2C's loss terms for one batch, for any action distribution `dist`.

    - ``loss_policy``: ``-mean(A * log pi(a|s))``, the policy gradient with advantages A;
    - ``loss_value``: ``vf_coef * mean((V - R)^2)`` to the n-step returns R;
    - ``loss_entropy``: ``-ent_coef * mean(entropy)``;
    - diagnostic: ``entropy``.
    """
    logprob = dist.log_prob(batch["actions"])
    advantages = normalized(batch["advantages"]) if normalize_advantages else batch["advantages"]
    entropy = dist.entropy().mean()
    return {
        "loss_policy": -(advantages * logprob).mean(),
        "loss_value": vf_coef * (values.float() - batch["returns"]).square().mean(),
        # Without an entropy bonus, its graph is not built (the term is a constant 0).
        "loss_entropy": -ent_coef * entropy if ent_coef else entropy.detach() * 0.0,
        "entropy": entropy.detach(),
    }


def make_optimizer(cfg, policy: nn.Module) -> torch.optim.Optimizer:
    """RMSprop as SB3/Baselines configure it for A2C (eps added outside the square root), or Adam,
    over the policy's trainable parameter groups (`finetune.lr_scale`)."""
    return optimizer_over(cfg, parameter_groups(policy, cfg.lr))


def optimizer_over(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    """`make_optimizer`'s optimiser over given parameter groups (A3C's workers: the shared ones)."""
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.eps, foreach=True)
    return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps, foreach=True)


class A2C(OnPolicy):
    """A2C updates of one policy: one gradient step per rollout, optional linear LR decay.

    `optimizer`: what steps the policy's gradients (default: `make_optimizer` over its parameters;
    A3C's workers pass a `shared_optim.HogwildOptimizer`, which applies them to the shared model).
    """

    def __init__(self, cfg, policy: nn.Module, total_updates: int, autocast, fast_path: bool = True, optimizer=None):
        self.cfg, self.policy = cfg, policy
        optimizer = make_optimizer(cfg, policy) if optimizer is None else optimizer
        self.gradient = GradientStep(policy, optimizer, cfg.max_grad_norm, autocast, fast_path)
        self.clock = TrainingClock(total_updates)
        self.distributed = Distributed()  # one rank unless the trainer says otherwise

    def seed(self, seed: int) -> None:
        """A2C draws no random numbers of its own (one full batch, no shuffling)."""

    def state_dict(self) -> dict:
        """Optimiser, skip counters and the schedule position."""
        return {**self.gradient.state_dict(), "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by `state_dict`."""
        self.gradient.load_state_dict(state)
        self.clock.load_state_dict(state["clock"])

    def update(self, rollout: RolloutBuffer) -> dict[str, float]:
        """One gradient step on the whole rollout; return its metrics."""
        cfg = self.cfg
        self.policy.train()
        rollout.compute_advantages(cfg.gamma, cfg.gae_lambda)
        lr = scheduled(cfg.lr, cfg.lr_schedule, self.clock.remaining(), cfg.lr_warmup)
        self.gradient.set_lr(lr)
        batch = rollout.sequence_batch() if rollout.recurrent else rollout.flat()
        normalize = cfg.normalize_advantages
        if normalize and self.distributed.enabled:  # statistics of every rank's rollout together
            batch, normalize = {**batch, "advantages": self.distributed.normalized(batch["advantages"])}, False
        outputs = self.gradient.forward_sequence(batch) if rollout.recurrent else self.gradient.forward(batch["obs"])
        terms = a2c_loss(self.policy.distribution(outputs[0]), outputs[1], batch, normalize, cfg.vf_coef, cfg.ent_coef)
        self.gradient.add_extra_losses(terms, outputs, batch)
        applied = self.gradient.step(terms, outputs)
        self.clock.tick()
        metrics = mean_metrics(torch.stack([v.detach().float() for v in terms.values()]), list(terms), 1)
        metrics.update(grad_norm=self.gradient.grad_norm if applied else float("nan"), learning_rate=lr,
                       explained_variance=explained_variance(rollout.values, rollout.returns),
                       skipped_steps=0 if applied else 1)
        return metrics
