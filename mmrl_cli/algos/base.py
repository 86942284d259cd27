"""What every algorithm offers the trainer, and the on-policy data source most of them share.

The trainer owns what is common to every run (progress, evaluation, checkpoints, signals,
callbacks, the monitor); an algorithm owns the rest. It is built by ``cls.build(setup)`` from
a `Setup` (config, env, policy, device, ...) and then offers:

- ``modules() -> {name: nn.Module}``: everything it trains or needs to act (the policy, a
  world model, a teacher, a high-level policy); every one is checkpointed and restored;
- ``train_step() -> (env_steps, metrics)``: whatever one step of this algorithm is (a rollout
  and its PPO epochs; a minibatch of demonstrations; a world-model update and imagination);
  ``env_steps`` is what it played in the env (0 for learning from a dataset);
- ``take_episodes()``: the training episodes finished since the last call (for the monitor);
- ``state_dict``/``load_state_dict`` (optimisers, schedules, its own RNGs) and
  ``source_state_dict``/``load_source_state_dict`` (its data source: the env and its current
  observation, a replay buffer, a dataset cursor), so a resumed run continues exactly;
- ``planned_updates(cfg, world_size, saved)``: how many train steps the run makes (also after
  a resume with another ``total_steps`` or rank count);
- ``gradients``: its `GradientStep`s, from which the trainer reads skip counters and gradient
  norms for the numerical-fault stop and the monitor;
- ``close()``: stop what it runs beside the trainer (A3C's worker processes); the trainer calls
  it when the run ends, before its last checkpoint, and again on any way out (an error, a second
  Ctrl-C), so it must be idempotent; ``cpu_only``: True for an algorithm that trains on CPU
  cores only (A3C's model in shared memory): ``hardware.device=auto`` then picks the CPU.
  An algorithm that cannot go on (a worker process failed) raises `AlgorithmFault`.

`OnPolicy` is the data source of PPO, A2C and distillation: a `Collector` that plays the policy
for one rollout per step, hooks that may label the rollout (a teacher's logits), then the
algorithm's ``update(rollout)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from ..rollout import Collector, RolloutBuffer


class AlgorithmFault(RuntimeError):
    """The algorithm cannot go on (e.g. a worker process failed); the message is one line."""


@dataclasses.dataclass
class Setup:
    """What the trainer hands an algorithm to build itself."""

    cfg: Any  # the run's TrainConfig
    env: Any  # the batched training env (this rank's)
    policy: nn.Module
    device: torch.device
    autocast: Any  # a factory of autocast contexts
    total_updates: int  # train steps the run makes
    seed: int  # this rank's seed
    teacher: nn.Module | None = None  # a frozen policy to learn from (compression=distill/kickstart)
    resuming: bool = False  # a checkpoint's weights and state follow (weights a fresh start loads are not needed)


class Algorithm:
    """The trainer-facing contract (see the module docstring); subclasses fill it in."""

    gradients: list  # the algorithm's GradientSteps (the first is the policy's)
    policy: nn.Module
    steps_per_update: int = 0  # env steps one train step plays on one rank (0: learns from data only)
    cpu_only: bool = False  # trains on CPU cores only: hardware.device=auto picks the CPU

    @classmethod
    def planned_updates(cls, cfg, world_size: int, saved: dict | None = None) -> int:
        """Train steps of a run: `total_steps` over the env steps of one step of every rank (at least
        one); resumed (`saved` progress): the steps done plus those the remaining env steps need."""
        per_update = cfg.steps_per_update * world_size
        if saved is None:
            return max(1, cfg.total_steps // per_update)
        return max(1, saved["update"] + max(0, cfg.total_steps - saved["steps"]) // per_update)

    def modules(self) -> dict[str, nn.Module]:
        """The named modules to checkpoint (the policy is ``policy``)."""
        return {"policy": self.policy}

    def watch(self, callbacks: list) -> None:
        """Give the algorithm the run's callbacks that hook into its data (none by default)."""

    def set_distributed(self, dist) -> None:
        """Train on several ranks: every gradient step averages over them."""
        self.distributed = dist
        for gradient in self.gradients:
            gradient.distributed = dist

    def take_episodes(self) -> list:
        """(returns, lengths, successes) of the training episodes finished since the last call."""
        return []

    def close(self) -> None:
        """Stop whatever the algorithm runs beside the trainer (none by default); idempotent."""

    def source_state_dict(self) -> dict | None:
        """The data source's state (None when there is none to keep)."""
        return None

    def load_source_state_dict(self, state: dict | None) -> None:
        """Continue the data source from `source_state_dict()`'s output."""

    @property
    def skipped_steps(self) -> int:
        """Gradient steps skipped (non-finite loss or gradient) so far, over every optimiser."""
        return sum(g.skipped_steps for g in self.gradients)

    @property
    def skipped_in_a_row(self) -> int:
        """The longest current run of skipped steps of any optimiser."""
        return max(g.skipped_in_a_row for g in self.gradients)

    def module_grad_norms(self) -> dict[str, float]:
        """Gradient norm per top-level module at the last step of each optimiser, before clipping."""
        norms: dict[str, float] = {}
        for gradient in self.gradients:
            norms.update(gradient.module_grad_norms())
        return norms


class OnPolicy(Algorithm):
    """Algorithms that learn from rollouts of the current policy: ``update(rollout) -> metrics``.

    ``build`` adds the `Collector` to an algorithm made from its config section; a train step is
    one rollout (``rollout.n_steps`` x ``rollout.n_envs`` env steps), the rollout hooks (callbacks'
    ``on_rollout``: per-transition labels such as a teacher's logits), then the update.
    """

    collector: Collector
    advantage_hooks: tuple = ()  # callbacks' on_advantages, after each update (`watch`)

    @classmethod
    def section(cls, cfg):
        """The config section this algorithm reads its settings from."""
        return cfg.algo

    @classmethod
    def build(cls, setup: Setup) -> OnPolicy:
        """The algorithm with an on-policy collector over `setup.env`."""
        cfg = setup.cfg
        algo = cls(cls.section(cfg), setup.policy, setup.total_updates, setup.autocast, cfg.hardware.fast_path)
        algo.collector = Collector(setup.env, setup.policy, cfg.rollout.n_steps, setup.device, setup.seed,
                                   setup.autocast, cfg.rollout.bootstrap_truncated)
        algo.rollout_hooks = []
        algo.steps_per_update = cfg.steps_per_update
        return algo

    @property
    def gradients(self) -> list:
        return [self.gradient]

    def watch(self, callbacks: list) -> None:
        """Callbacks with ``on_rollout(rollout)`` see (and may label) every rollout before the update;
        those with ``on_advantages(rollout)`` see it after the update, with the advantages and returns
        the update computed beside the values and per-step fields the collector kept (PLR's scores)."""
        self.rollout_hooks += [c.on_rollout for c in callbacks if hasattr(c, "on_rollout")]
        self.advantage_hooks = [*self.advantage_hooks, *(c.on_advantages for c in callbacks if hasattr(c, "on_advantages"))]

    def train_step(self) -> tuple[int, dict[str, float]]:
        """Collect one rollout with the current policy, let the hooks label it, learn from it, then let
        the advantage hooks read it."""
        rollout = self.collector.collect()
        for hook in self.rollout_hooks:
            hook(rollout)
        metrics = self.update(rollout)
        for hook in self.advantage_hooks:
            hook(rollout)
        return self.steps_per_update, metrics

    def update(self, rollout: RolloutBuffer) -> dict[str, float]:
        """Learn from one rollout; return the metrics."""
        raise NotImplementedError

    def take_episodes(self) -> list:
        return self.collector.take_episodes()

    def source_state_dict(self) -> dict:
        return self.collector.state_dict()

    def load_source_state_dict(self, state: dict | None) -> None:
        self.collector.load_state_dict(state)
