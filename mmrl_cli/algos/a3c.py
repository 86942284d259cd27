"""Asynchronous advantage actor-critic, A3C (Mnih et al. 2016), with Hogwild worker processes.

The trainer's process is the coordinator: it owns progress, evaluation, checkpoints, signals and
the monitor, as for every algorithm. The policy it holds is *the shared model*: its parameters
(and the optimiser's statistics, `shared_optim`) live in shared memory. `algo.workers` worker
processes (`a3c_worker`, started by `a3c_pool.WorkerPool`) each play their own
``rollout.n_envs`` envs with a local copy of the policy, compute A2C's n-step actor-critic loss
and gradients on it (`a2c.a2c_loss`, the same code as A2C: GAE with ``gae_lambda``, plain n-step
returns at 1) and apply them to the shared model with the shared RMSprop (or Adam), without locks.

One train step of the coordinator gathers ``algo.reports_per_step`` worker updates (whichever
workers made them) and returns their env steps, the means of their metrics (A2C's tags) and:

- ``a3c/staleness`` (mean) and ``a3c/staleness_max``: updates of the shared model between a
  worker's copy of the weights and the apply of its gradient (0: no other worker got in between);
- ``perf/worker_<i>_sps``: each reporting worker's env steps per second (its own clock);
- ``a3c/restarts``: workers restarted so far (`a3c_pool`: a worker killed by a signal restarts).

Checkpoints hold the shared model, the shared optimiser's statistics, the schedule position and
the counters, taken while the workers may still be applying an update (Hogwild reads). A resumed
run continues from them with fresh envs and new worker seeds; bit-identical replay is impossible
under asynchrony (the order in which workers apply their updates is the OS scheduler's).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import nn

from .a2c import make_optimizer
from .a3c_pool import WorkerPool
from .a3c_worker import WorkerSpec
from .base import Algorithm, Setup
from .gradient import TrainingClock
from .shared_optim import init_state, share_state, state_tensors

SEED_LIMIT = 2**31 - 1


def steps_per_train_step(cfg) -> int:
    """Env steps of one coordinator train step: `algo.reports_per_step` worker updates of
    ``rollout.n_envs * rollout.n_steps`` env steps each (`TrainConfig.steps_per_update`)."""
    return cfg.steps_per_update


def worker_seed(seed: int, index: int, start_update: int, restarts: int) -> int:
    """A worker's seed: distinct per run seed, worker slot, resumed position and restart."""
    return int(np.random.SeedSequence([seed, index, start_update, restarts]).generate_state(1)[0]) % SEED_LIMIT


def mean_over(reports: list[dict]) -> dict[str, float]:
    """The mean of each metric over the reports (NaN entries, e.g. a skipped step's norm, left out);
    ``skipped_steps`` is summed."""
    names = reports[0]["metrics"].keys()
    means = {}
    for name in names:
        values = [r["metrics"][name] for r in reports if not math.isnan(r["metrics"][name])]
        if name == "skipped_steps":
            means[name] = float(sum(values))
        else:
            means[name] = sum(values) / len(values) if values else float("nan")
    return means


def worker_throughput(reports: list[dict]) -> dict[str, float]:
    """``perf/worker_<i>_sps`` of every worker that reported: its env steps over its own seconds."""
    steps: dict[int, float] = {}
    seconds: dict[int, float] = {}
    for r in reports:
        steps[r["worker"]] = steps.get(r["worker"], 0) + r["steps"]
        seconds[r["worker"]] = seconds.get(r["worker"], 0.0) + r["seconds"]
    return {f"perf/worker_{i}_sps": steps[i] / seconds[i] for i in sorted(steps) if seconds[i] > 0}


def episodes_of(reports: list[dict]) -> list:
    """The finished episodes of the reports, as the monitor takes them: (returns, lengths, successes) tensors."""
    episodes = []
    for report in reports:
        for returns, lengths, successes in report["episodes"]:
            episodes.append((torch.tensor(returns), torch.tensor(lengths),
                             None if successes is None else torch.tensor(successes)))
    return episodes


def group_layout(optimizer: torch.optim.Optimizer, policy: nn.Module) -> list[tuple[dict, list[str]]]:
    """The optimiser's parameter groups as (settings, parameter names): a worker rebuilds them over
    the shared parameters (per-group learning rates of `finetune.lr_scale`; frozen ones left out)."""
    name_of = {id(p): name for name, p in policy.named_parameters()}
    return [({k: v for k, v in group.items() if k != "params"}, [name_of[id(p)] for p in group["params"]])
            for group in optimizer.param_groups]


class A3C(Algorithm):
    """The coordinator's side of A3C: the shared model and optimiser, the worker pool, the reports."""

    cpu_only = True

    def __init__(self, cfg, policy: nn.Module, total_updates: int, seed: int):
        self.run_cfg, self.cfg, self.policy = cfg, cfg.algo, policy
        self.seed_value = seed
        policy.share_memory()
        self.optimizer = make_optimizer(self.cfg, policy)
        init_state(self.optimizer)
        share_state(self.optimizer)
        self.clock = TrainingClock(total_updates)
        self.steps_per_update = steps_per_train_step(cfg)
        self.workers = self.cfg.worker_count
        self.applied = torch.zeros(self.workers, dtype=torch.int64).share_memory_()
        self.applied_before = 0  # updates applied in earlier sessions (resumed runs)
        self.restarts_before = 0
        self.pool: WorkerPool | None = None
        self.episodes: list = []
        self.gradients: list = []  # the workers own the gradient steps; their counters come in reports
        self.skipped_total = 0
        self.skipped_by_worker: dict[int, int] = {}
        self.grad_norms: dict[str, float] = {}

    @classmethod
    def build(cls, setup: Setup) -> A3C:
        """The shared model is `setup.policy`; the workers make their own envs (the trainer's is closed)."""
        if hasattr(setup.env, "close"):
            setup.env.close()
        return cls(setup.cfg, setup.policy, setup.total_updates, setup.seed)

    def seed(self, seed: int) -> None:
        """The workers' seeds derive from the run's seed (`worker_seed`)."""
        self.seed_value = seed

    def watch(self, callbacks: list) -> None:
        """Rollouts stay in the workers: callbacks that label rollouts cannot run."""
        if any(hasattr(c, "on_rollout") for c in callbacks):
            raise ValueError("algo=a3c: rollouts stay in the worker processes; callbacks with on_rollout are not supported")

    # ------------------------------------------------------------------------ workers
    def worker_spec(self, index: int, restarts: int, credits, reports) -> WorkerSpec:
        """What the worker of slot `index` is started with."""
        return WorkerSpec(
            cfg=self.run_cfg, index=index,
            seed=worker_seed(self.seed_value, index, self.clock.updates_done, restarts),
            layout=group_layout(self.optimizer, self.policy),
            shared=dict(self.policy.state_dict(keep_vars=True)),
            optimizer_state=state_tensors(self.optimizer), applied=self.applied, credits=credits, reports=reports,
            parent_pid=os.getpid())

    def start(self) -> None:
        """Start the workers with the updates this run (or what is left of it) makes."""
        budget = (self.clock.total_updates - self.clock.updates_done) * self.cfg.reports_per_step
        self.pool = WorkerPool(self.worker_spec, self.workers, budget, self.cfg.reports_per_step, self.cfg.max_restarts)
        self.pool.remaining = self.clock.remaining()
        self.pool.start()

    def close(self) -> None:
        """Stop every worker (idempotent)."""
        if self.pool is not None:
            self.restarts_before += self.pool.restarts
            self.pool.stop()
            self.pool = None

    # --------------------------------------------------------------------- train step
    def train_step(self) -> tuple[int, dict[str, float]]:
        """Gather `algo.reports_per_step` worker updates; their env steps and metrics."""
        if self.pool is None:
            self.start()
        reports = self.pool.gather(self.cfg.reports_per_step)
        self.clock.tick()
        self.pool.remaining = self.clock.remaining()
        metrics = self.summarise(reports)
        if self.clock.updates_done >= self.clock.total_updates:  # the budget is spent: the workers are idle
            self.close()
        return self.steps_per_update, metrics

    def summarise(self, reports: list[dict]) -> dict[str, float]:
        """One train step's metrics from its reports; keep their episodes and counters."""
        metrics = mean_over(reports)
        staleness = [r["staleness"] for r in reports if r["staleness"] is not None]
        if staleness:
            metrics["a3c/staleness"] = sum(staleness) / len(staleness)
            metrics["a3c/staleness_max"] = float(max(staleness))
        metrics.update(worker_throughput(reports))
        metrics["a3c/restarts"] = float(self.restarts)
        self.episodes += episodes_of(reports)
        for report in reports:
            self.skipped_by_worker[report["worker"]] = report["skipped_in_a_row"]
            if report["grad_norms"]:
                self.grad_norms = report["grad_norms"]
        self.skipped_total += int(metrics.get("skipped_steps", 0))
        return metrics

    @property
    def restarts(self) -> int:
        """Workers restarted so far in this run (all sessions)."""
        return self.restarts_before + (self.pool.restarts if self.pool is not None else 0)

    def take_episodes(self) -> list:
        """The training episodes the workers reported since the last call."""
        episodes, self.episodes = self.episodes, []
        return episodes

    @property
    def skipped_steps(self) -> int:
        """Worker updates skipped (non-finite loss or gradient) so far."""
        return self.skipped_total

    @property
    def skipped_in_a_row(self) -> int:
        """The longest current run of skipped updates of any worker."""
        return max(self.skipped_by_worker.values(), default=0)

    def module_grad_norms(self) -> dict[str, float]:
        """Per-module gradient norms (before clipping) of the latest worker update reported."""
        return dict(self.grad_norms)

    # -------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The shared optimiser's statistics, the schedule position and the counters."""
        return {"optimizer": self.optimizer.state_dict(), "clock": self.clock.state_dict(),
                "skipped_steps": self.skipped_total, "applied": self.applied_before + int(self.applied.sum()),
                "restarts": self.restarts}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output (before the workers start: the statistics are re-shared)."""
        if self.pool is not None:
            raise RuntimeError("A3C state must be loaded before its workers start")
        self.optimizer.load_state_dict(state["optimizer"])
        share_state(self.optimizer)
        self.clock.load_state_dict(state["clock"])
        self.skipped_total = state["skipped_steps"]
        self.applied_before, self.restarts_before = state["applied"], state["restarts"]
        self.applied.zero_()

    def source_state_dict(self) -> dict:
        """The workers' envs are not saved: a resumed run's workers start fresh envs (new seeds)."""
        return {}
