"""Policy distillation (Rusu et al. 2016): a student learns to act like a frozen teacher.

The student plays (so it learns on the states *it* visits, as in DAgger, Ross et al. 2011);
every state of its rollout is labelled by the teacher; the loss is the KL divergence from the
teacher's action distribution to the student's, plus a value term matching the teacher's value
(so the student can be fine-tuned with RL afterwards). No reward is used. The optimiser steps go
through the shared `GradientStep`, like every algorithm's.

A recurrent teacher (an `algo=dreamer` agent, a `model.memory` policy) labels each rollout in step
order (`TeacherLabels`): its state follows every env through the student's episodes, with the
actions the student took, from rollout to rollout (saved with the data source, so resume is exact).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import Distributed
from ..distributions import remember_action
from ..rollout import RolloutBuffer
from .base import OnPolicy, Setup
from .gradient import GradientStep, ShuffledUpdates, StepMetrics, TrainingClock
from ..models.finetune import parameter_groups

LABEL_CHUNK = 4096  # observations per teacher forward pass when labelling a rollout


@torch.no_grad()
def label_with_teacher(rollout: RolloutBuffer, teacher: nn.Module, values: bool = True) -> None:
    """Add the teacher's ``teacher_logits`` (and ``teacher_values``) for every state of `rollout`
    to its labels: one teacher pass per state, however many epochs then read them."""
    obs = rollout.flat()["obs"]
    total = rollout.n_steps * rollout.n_envs
    outputs = [teacher({k: v[start:start + LABEL_CHUNK] for k, v in obs.items()}) for start in range(0, total, LABEL_CHUNK)]
    rollout.labels["teacher_logits"] = torch.cat([logits for logits, _ in outputs])
    if values:
        rollout.labels["teacher_values"] = torch.cat([value for _, value in outputs])


class TeacherLabels:
    """Labels each rollout with a frozen teacher's action logits (and values).

    A memoryless teacher reads every state on its own (`label_with_teacher`). A recurrent one
    (``teacher.recurrent``: ``initial_state``/``step``, and ``remember_action`` where its state holds
    the last action) is replayed along the rollout in step order: at step t it reads the observation
    with its state, which restarts where an episode starts (the step after ``dones``), and then
    remembers the action the student took there. Its state is carried from one rollout to the next,
    so the teacher sees every episode whole, as when it acts itself.
    """

    def __init__(self, teacher: nn.Module, n_envs: int, device: torch.device):
        self.teacher = teacher
        self.recurrent = bool(getattr(teacher, "recurrent", False))
        self.state = teacher.initial_state(n_envs, device) if self.recurrent else None
        self.episode_starts = torch.ones(n_envs, device=device) if self.recurrent else None  # every env starts afresh

    @torch.no_grad()
    def label(self, rollout: RolloutBuffer, values: bool = True) -> None:
        """Add ``teacher_logits`` (and ``teacher_values``) for every state of `rollout` (time-major, as
        `RolloutBuffer.flat`)."""
        if not self.recurrent:
            label_with_teacher(rollout, self.teacher, values)
            return
        logits, teacher_values = [], []
        for t in range(rollout.n_steps):
            params, value, state = self.teacher.step({k: v[t] for k, v in rollout.obs.items()}, self.state,
                                                     self.episode_starts)
            logits.append(params)
            teacher_values.append(value)
            self.state = remember_action(self.teacher, state.float(), rollout.actions[t])
            self.episode_starts = rollout.dones[t].clone()  # where an episode ended, the next state starts one
        rollout.labels["teacher_logits"] = torch.cat(logits)
        if values:
            rollout.labels["teacher_values"] = torch.cat(teacher_values)

    def state_dict(self) -> dict:
        """A recurrent teacher's state per env and the episode-start flags (empty when memoryless)."""
        return {"state": self.state, "episode_starts": self.episode_starts} if self.recurrent else {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        if self.recurrent:
            self.state = state["state"].to(self.state.device)
            self.episode_starts = state["episode_starts"].to(self.episode_starts.device)


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean ``KL(teacher || student)`` of the action distributions (teacher softened by `temperature`)."""
    teacher_log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student_log_p = torch.log_softmax(student_logits.float(), dim=-1)
    return (teacher_log_p.exp() * (teacher_log_p - student_log_p)).sum(-1).mean()


def distill_loss(logits: torch.Tensor, values: torch.Tensor, teacher_logits: torch.Tensor, teacher_values: torch.Tensor,
                 temperature: float, value_coef: float) -> dict[str, torch.Tensor]:
    """Loss terms: ``loss_distill`` (KL to the teacher's policy), ``loss_value`` (``value_coef`` x MSE
    to the teacher's value); diagnostics ``agreement`` (same argmax action) and ``kl``."""
    kl = distillation_kl(logits, teacher_logits, temperature)
    with torch.no_grad():
        agreement = (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
    return {"loss_distill": kl, "loss_value": value_coef * (values.float() - teacher_values.float()).square().mean(),
            "kl": kl.detach(), "agreement": agreement}


class Distill(ShuffledUpdates, OnPolicy):
    """Distillation updates of one student: epochs of minibatches over each rollout, Adam.

    Chosen by ``compression=distill`` and configured by that section (it learns from a teacher,
    not from rewards); the teacher is a module of the run (checkpointed with it).
    """

    @classmethod
    def section(cls, cfg):
        return cfg.compression

    @classmethod
    def build(cls, setup: Setup) -> Distill:
        """The algorithm with its collector, and the teacher that labels its rollouts."""
        algo = super().build(setup)
        algo.teacher = TeacherLabels(setup.teacher, setup.env.num_envs, setup.device)
        return algo

    def __init__(self, cfg, policy: nn.Module, total_updates: int, autocast, fast_path: bool = True):
        self.cfg, self.policy = cfg, policy
        optimizer = torch.optim.Adam(parameter_groups(policy, cfg.lr), lr=cfg.lr, eps=1e-5)
        self.gradient = GradientStep(policy, optimizer, cfg.max_grad_norm, autocast, fast_path=False)
        self.generator = torch.Generator()
        self.clock = TrainingClock(total_updates)
        self.distributed = Distributed()
        self.teacher: TeacherLabels | None = None  # set by `build`

    def update(self, rollout: RolloutBuffer) -> dict[str, float]:
        """Label the rollout's states with the teacher, then `epochs` passes of minibatch steps."""
        cfg = self.cfg
        self.policy.train()
        self.teacher.label(rollout)
        metrics = StepMetrics()
        for _epoch in range(cfg.epochs):
            for batch in rollout.minibatches(cfg.batch_size, self.generator):
                outputs = self.gradient.forward(batch["obs"])
                terms = distill_loss(*outputs, batch["teacher_logits"], batch["teacher_values"], cfg.temperature,
                                     cfg.value_coef)
                if self.gradient.step(terms, outputs):
                    metrics.add(terms)
        self.clock.tick()
        means = metrics.means()
        means.update(grad_norm=self.gradient.grad_norm if metrics.count else float("nan"), learning_rate=cfg.lr,
                     minibatches=metrics.count)
        return means

    def source_state_dict(self) -> dict:
        """The collector's state, and a recurrent teacher's state along the envs' episodes (a
        memoryless teacher adds nothing: its runs' checkpoints stay as they were)."""
        state = super().source_state_dict()
        if self.teacher.recurrent:
            state["teacher_memory"] = self.teacher.state_dict()
        return state

    def load_source_state_dict(self, state: dict | None) -> None:
        """Continue the collector and the teacher's state (envs started afresh: the teacher's too)."""
        super().load_source_state_dict(state)
        if state is not None and "teacher_memory" in state:
            self.teacher.load_state_dict(state["teacher_memory"])
