"""One A3C worker process: play its own envs with a local copy of the policy, send gradients.

A worker (started by `a3c_pool.WorkerPool` with the ``spawn`` method) builds its own envs and
its own policy from the run's config, then loops: wait for a credit from the coordinator (one
credit = one update; a credit also carries how much of training remains, for the learning-rate
schedule); copy the shared weights into the local policy; play ``rollout.n_steps`` steps of its
``rollout.n_envs`` envs (`rollout.Collector`); compute A2C's loss and gradients on the local
copy and apply them to the shared model with the shared optimiser (`shared_optim`), without
locks; send a report (env steps, metrics, finished episodes, staleness) to the coordinator.

Staleness: every worker counts the updates it applied in its own slot of a shared int64 tensor
(one writer per slot: exact, lock-free); the updates of the shared model between a worker's
copy and its own apply are the sum after its apply, minus the sum at its copy, minus one.

The worker ignores SIGINT and SIGTERM (Ctrl-C reaches the whole process group: the coordinator
alone decides when to stop, and stops the workers itself); it dies with the coordinator (Linux
``PR_SET_PDEATHSIG``; elsewhere a closed pipe ends it at its next send or receive), so no
worker outlives its run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import torch

from ..builders import autocast_for, build_policy_from
from ..envs import make_env
from ..rollout import Collector
from ..text import tokenizer_for
from .a2c import A2C, optimizer_over
from .shared_optim import HogwildOptimizer, adopt_state

PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


@dataclasses.dataclass
class WorkerSpec:
    """What a worker process is started with (pickled to it; tensors travel as shared memory)."""

    cfg: Any  # the run's TrainConfig
    index: int  # the worker's slot, 0..workers-1 (kept by a restarted worker)
    seed: int  # its envs' and action sampling's seed
    layout: list[tuple[dict, list[str]]]  # the shared optimiser's groups: (settings, parameter names)
    shared: dict[str, torch.Tensor]  # the shared model's parameters and buffers, by name
    optimizer_state: list[dict[str, torch.Tensor]]  # the shared optimiser statistics, per parameter
    applied: torch.Tensor  # int64 per worker slot: updates each applied (shared)
    credits: Connection  # from the coordinator: (updates, fraction of training remaining), or None: stop
    reports: Connection  # to the coordinator: one dict per update
    parent_pid: int  # the coordinator's pid


class RemoteClock:
    """The `TrainingClock` of a worker's learner: the fraction of training remaining is the
    coordinator's, received with each credit."""

    def __init__(self) -> None:
        self.fraction = 1.0

    def remaining(self) -> float:
        """The fraction of training left, as the coordinator last said."""
        return self.fraction

    def tick(self) -> None:
        """The coordinator's clock counts the run's progress; nothing to do here."""


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a closed pipe ends the worker instead
        pass
    if os.getppid() != parent_pid:
        sys.exit(0)


class Worker:
    """A worker's envs, local policy, collector and learner (A2C's update on the local copy)."""

    def __init__(self, spec: WorkerSpec):
        cfg, device = spec.cfg, torch.device("cpu")
        self.spec = spec
        autocast = autocast_for(device, cfg.hardware.precision)
        self.env = make_env(cfg.data, cfg.rollout.n_envs, device, spec.seed, tokenizer=tokenizer_for(cfg.model))
        self.policy = build_policy_from(cfg, self.env, device)[0]
        local = self.policy.state_dict(keep_vars=True)
        if set(local) != set(spec.shared) or any(spec.shared[k].shape != v.shape for k, v in local.items()):
            raise ValueError("the shared policy's structure is not the one the config builds (a structurally "
                             "compressed or re-headed source?)")
        self.local = [v.detach() for v in local.values()]
        self.shared = [spec.shared[k].detach() for k in local]
        optimizer = optimizer_over(cfg.algo, [{**settings, "params": [spec.shared[n] for n in names]}
                                              for settings, names in spec.layout])
        adopt_state(optimizer, spec.optimizer_state)
        named = dict(self.policy.named_parameters())
        hogwild = HogwildOptimizer(optimizer, [named[n] for _, names in spec.layout for n in names])
        self.learner = A2C(cfg.algo, self.policy, 1, autocast, cfg.hardware.fast_path, optimizer=hogwild)
        self.learner.clock = RemoteClock()
        self.collector = Collector(self.env, self.policy, cfg.rollout.n_steps, device, spec.seed, autocast,
                                   cfg.rollout.bootstrap_truncated)
        self.steps_per_update = cfg.rollout.n_envs * cfg.rollout.n_steps

    def sync(self) -> int:
        """Copy the shared weights into the local policy; the shared model's update count at the copy."""
        version = int(self.spec.applied.sum())
        with torch.no_grad():
            torch._foreach_copy_(self.local, self.shared)
        return version

    def update(self) -> dict:
        """One A3C update: copy, play, learn, apply; the report for the coordinator."""
        applied = self.spec.applied
        copied_at = self.sync()
        metrics = self.learner.update(self.collector.collect())
        staleness = None
        if not metrics["skipped_steps"]:
            applied[self.spec.index] += 1
            staleness = int(applied.sum()) - copied_at - 1
        episodes = [(r.tolist(), n.tolist(), None if s is None else s.tolist())
                    for r, n, s in self.collector.take_episodes()]
        gradient = self.learner.gradient
        return {"worker": self.spec.index, "steps": self.steps_per_update, "metrics": metrics, "staleness": staleness,
                "episodes": episodes, "skipped_in_a_row": gradient.skipped_in_a_row,
                "grad_norms": gradient.module_grad_norms()}

    def run(self) -> None:
        """Update while the coordinator grants credits; return when it says stop (None)."""
        credits, last = 0, time.perf_counter()
        while True:
            while credits == 0 or self.spec.credits.poll():
                message = self.spec.credits.recv()
                if message is None:
                    return
                granted, self.learner.clock.fraction = message
                credits += granted
            credits -= 1
            report = self.update()
            now = time.perf_counter()
            report["seconds"], last = now - last, now
            self.spec.reports.send(report)


def run_worker(spec: WorkerSpec) -> None:
    """A worker process's entry point: signals, threads, then `Worker.run` until told to stop.

    Exits 0 when told to stop or when the coordinator is gone (a closed pipe); on an error, sends
    it to the coordinator as one line (``{"error": ...}``), prints its traceback, and exits 1.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(spec.parent_pid)
    torch.set_num_threads(1)
    try:
        Worker(spec).run()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the coordinator closed our pipes or is gone: nothing left to do
    except Exception as e:  # noqa: BLE001 - any failure is reported to the coordinator
        traceback.print_exc()
        line = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        try:
            spec.reports.send({"error": line})
        except OSError:
            pass
        sys.exit(1)
