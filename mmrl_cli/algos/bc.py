"""Behaviour cloning: a policy learns to act like the expert of a demonstration dataset.

The data source is a `DemoDataset` (written by `mmrl demos`), not the env: a train step is one
shuffled minibatch of demonstrations and plays no env steps, so the run's length is
``algo.updates`` gradient steps (``total_steps`` is not used). The loss is the negative
log-likelihood of the expert's actions under the policy's action distribution (any distribution:
categorical or Gaussian), plus, with ``vf_coef > 0``, a value term that fits the critic to the
demonstrations' discounted returns-to-go, so that `init_from=<bc run>` starts RL fine-tuning
with a critic that already knows what the expert's states are worth. Evaluation, checkpoints
and resume (the minibatch stream included) are the trainer's, as for every algorithm.
"""

from __future__ import annotations

import torch
from torch import nn

from ..demos.dataset import DemoDataset
from .base import Algorithm, Setup
from .gradient import GradientStep, TrainingClock, mean_metrics, scheduled
from ..models.finetune import parameter_groups


def returns_to_go(rewards: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return from each transition to the end of its episode (transitions in episode order)."""
    out = torch.empty_like(rewards)
    running = torch.zeros((), dtype=rewards.dtype)
    for t in range(len(rewards) - 1, -1, -1):  # once per run, over the dataset
        running = rewards[t] + gamma * running * (~dones[t])
        out[t] = running
    return out


def bc_loss(dist, values: torch.Tensor, batch: dict, vf_coef: float, ent_coef: float) -> dict[str, torch.Tensor]:
    """Behaviour cloning's loss terms for one minibatch of demonstrations.

    - ``loss_bc``: ``-mean(log pi(a_expert | s))``;
    - ``loss_value``: ``vf_coef * mean((V - G)^2)`` to the discounted returns-to-go G;
    - ``loss_entropy``: ``-ent_coef * mean(entropy)`` (a little keeps the policy from collapsing
      before RL fine-tuning);
    - diagnostics: ``accuracy`` (the policy's most likely action is the expert's; discrete only)
      and ``entropy``.
    """
    log_likelihood = dist.log_prob(batch["actions"])
    entropy = dist.entropy().mean()
    terms = {"loss_bc": -log_likelihood.mean(),
             "loss_value": vf_coef * (values.float() - batch["returns_to_go"]).square().mean(),
             "loss_entropy": -ent_coef * entropy if ent_coef else entropy.detach() * 0.0,
             "entropy": entropy.detach()}
    if batch["actions"].dtype == torch.int64:
        with torch.no_grad():
            terms["accuracy"] = (dist.mode() == batch["actions"]).float().mean()
    return terms


class BC(Algorithm):
    """Behaviour cloning from a demonstration dataset: Adam, one minibatch per train step."""

    def __init__(self, cfg, policy: nn.Module, dataset: DemoDataset, total_updates: int, autocast):
        self.cfg, self.policy, self.dataset = cfg, policy, dataset
        optimizer = torch.optim.Adam(parameter_groups(policy, cfg.lr), lr=cfg.lr, eps=1e-5)
        self.gradient = GradientStep(policy, optimizer, cfg.max_grad_norm, autocast, fast_path=False)
        self.clock = TrainingClock(total_updates)
        self.returns_to_go = returns_to_go(dataset.rewards.float().cpu(), dataset.dones.cpu(), cfg.gamma)
        self.returns_to_go = self.returns_to_go.to(dataset.rewards.device)
        self.eval_every_updates = cfg.eval_every_updates

    @classmethod
    def planned_updates(cls, cfg, world_size: int, saved: dict | None = None) -> int:
        """``algo.updates`` gradient steps, however many ranks (each draws its own minibatches)."""
        return cfg.algo.updates

    @classmethod
    def build(cls, setup: Setup) -> BC:
        """Load the dataset (verified, and checked against this run's env) onto the training device."""
        cfg = setup.cfg
        dataset = DemoDataset(cfg.algo.demos, cfg.algo.fraction, seed=setup.seed, device=setup.device)
        dataset.check_compatible(cfg.data, setup.env.observation_spec, setup.env.action_spec.n)
        if hasattr(setup.env, "close"):  # BC never steps the training env; evaluation builds its own
            setup.env.close()
        return cls(cfg.algo, setup.policy, dataset, setup.total_updates, setup.autocast)

    @property
    def gradients(self) -> list:
        return [self.gradient]

    def seed(self, seed: int) -> None:
        """The dataset's minibatch generator was seeded when it was loaded."""

    def train_step(self) -> tuple[int, dict[str, float]]:
        """One gradient step on the next shuffled minibatch of demonstrations (no env steps)."""
        cfg = self.cfg
        self.policy.train()
        lr = scheduled(cfg.lr, cfg.lr_schedule, self.clock.remaining())
        self.gradient.set_lr(lr)
        batch = self.dataset.next_batch(cfg.batch_size)
        batch["returns_to_go"] = self.returns_to_go.index_select(0, self.dataset.last_index.to(self.returns_to_go.device))
        params, values = self.gradient.forward(batch["obs"])
        terms = bc_loss(self.policy.distribution(params), values, batch, cfg.vf_coef, cfg.ent_coef)
        applied = self.gradient.step(terms, (params, values))
        self.clock.tick()
        metrics = mean_metrics(torch.stack([v.detach().float() for v in terms.values()]), list(terms), 1)
        metrics.update(grad_norm=self.gradient.grad_norm if applied else float("nan"), learning_rate=lr,
                       epoch=float(self.dataset.epochs), skipped_steps=0 if applied else 1)
        return 0, metrics

    def state_dict(self) -> dict:
        """Optimiser, skip counters and the schedule position."""
        return {**self.gradient.state_dict(), "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by `state_dict`."""
        self.gradient.load_state_dict(state)
        self.clock.load_state_dict(state["clock"])

    def source_state_dict(self) -> dict:
        """Where the minibatch stream stands (resumes exactly)."""
        return self.dataset.state_dict()

    def load_source_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self.dataset.load_state_dict(state)
