"""One gradient step for any algorithm: forward, loss terms, backward, checks, clipping, optimiser.

The contract every algorithm follows: its loss is a dict of named tensors; the ``loss_*`` terms
add up to the total that goes through ``backward()`` and a torch optimiser; other entries are
diagnostics (detached). A method that adds a term (a teacher's distillation loss, behaviour
cloning, a regulariser) appends a function to `GradientStep.extra_losses`; its ``loss_*`` terms
are added to the algorithm's and everything goes through autograd, with no special casing.

`GradientStep` also owns what every algorithm needs around that step:
- the gradient norm, measured *before* clipping (so the monitor's vanishing/exploding warnings
  see the real gradients), per parameter and summed per module;
- one device sync per step that reads the loss and the norm together: a step whose loss or
  gradient is not finite is skipped (parameters and optimiser state untouched) and counted;
- clipping to ``max_grad_norm`` (`nn.utils.clip_grad_norm_`'s rule), then ``optimizer.step()``.

The fast path. At classic-control sizes a gradient step is ~100 small kernels whose fixed costs
(autograd's bookkeeping, the optimiser's Python layer) exceed their arithmetic. A policy with a
hand-written backward (`analytic_backward`: the MLP without a mission embedding) then runs its
forward without a graph; its two outputs (logits, values) become leaf tensors; the gradient of
the loss with respect to them comes from autograd over the loss ops alone, or, where the
algorithm has one (PPO), from a closed form computed with the loss; the policy's own chain rule
takes it to the parameters; and a fused Adam's kernel is called directly (`optim.adam_step`,
unless optimiser hooks are registered). The path is chosen automatically, only when it computes
exactly what autograd would: fp32, the policy covers every parameter, no `extra_losses`, and
`hardware.fast_path` on. Tests compare it with plain autograd; `docs/architecture.md` says what
it buys.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .optim import adam_step, scale_gradients


def scheduled(value: float, schedule: str, progress_remaining: float, warmup: float = 0.0) -> float:
    """`value` now: constant, or annealed linearly from `value` to 0 (`progress_remaining` 1 -> 0);
    with `warmup` > 0, first raised linearly from 0 over that fraction of training.

    A warm-up keeps the first updates of RMSprop/Adam small while their squared-gradient averages
    are still near their zero start (torch's RMSprop, which has no bias correction, otherwise
    moves every weight by ~10x the learning rate on its first step).
    """
    value = value * progress_remaining if schedule == "linear" else value
    if warmup > 0.0:
        value *= min(1.0, (1.0 - progress_remaining) / warmup)
    return value


class TrainingClock:
    """How much of training remains (1 at the start, 0 at the end), for annealed hyperparameters.

    A run resumed with another length (``total_steps=...`` on resume) does not jump: from the
    update it resumes at, the remaining fraction falls linearly from where it was to 0 at the
    new end, so a linearly annealed learning rate continues smoothly instead of being re-stretched.
    """

    def __init__(self, total_updates: int):
        self.total_updates = total_updates
        self.updates_done = 0
        self.anchor_update, self.anchor_remaining = 0, 1.0  # where the current linear segment starts

    def remaining(self) -> float:
        """The fraction of training left, in [0, 1]."""
        span = max(self.total_updates - self.anchor_update, 1)
        return min(1.0, max(0.0, self.anchor_remaining * (self.total_updates - self.updates_done) / span))

    def tick(self) -> None:
        """One update done."""
        self.updates_done += 1

    def state_dict(self) -> dict:
        return {"updates_done": self.updates_done, "total_updates": self.total_updates,
                "anchor_update": self.anchor_update, "anchor_remaining": self.anchor_remaining}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved clock; if the run's length changed, continue from where the schedules were."""
        planned = self.total_updates
        self.updates_done = state["updates_done"]
        self.total_updates = state["total_updates"]
        self.anchor_update, self.anchor_remaining = state["anchor_update"], state["anchor_remaining"]
        if planned != self.total_updates:
            self.anchor_remaining, self.anchor_update = self.remaining(), self.updates_done
            self.total_updates = planned


def total_loss(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the ``loss_*`` terms (what goes through backward)."""
    losses = [value for name, value in terms.items() if name.startswith("loss_")]
    return losses[0] if len(losses) == 1 else torch.stack(losses).sum()


def top_level_module_names(module: nn.Module) -> tuple[list[str], list[int]]:
    """Names of `module`'s top-level children, and for each parameter the index of its child."""
    names: list[str] = []
    owner: list[int] = []
    for name, _ in module.named_parameters():
        child = name.split(".", 1)[0]
        if child not in names:
            names.append(child)
        owner.append(names.index(child))
    return names, owner


class GradientStep:
    """Turns an algorithm's loss terms into a (checked, clipped) optimiser step on `policy`."""

    def __init__(self, policy: nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float, autocast,
                 fast_path: bool = True):
        self.policy, self.optimizer, self.max_grad_norm, self.autocast = policy, optimizer, max_grad_norm, autocast
        self.parameters = list(policy.parameters())
        self.fast_capable = (fast_path and bool(getattr(policy, "analytic_backward", False))
                             and autocast is contextlib.nullcontext)
        # Functions (logits, values, batch) -> dict of extra ``loss_*`` terms, added to every step's loss.
        self.extra_losses: list = []
        self.module_names, owner = top_level_module_names(policy)
        self.owner = torch.tensor(owner)
        self.last_norms: list[torch.Tensor] | None = None  # per-parameter gradient norms of the last step, before clipping
        self.last_with_grad: list[int] = []
        self.grad_norm = float("nan")  # global gradient norm of the last step, before clipping
        self.saved = None  # the fast path's saved activations, between forward and backward
        # Steps skipped for a non-finite loss or gradient: in total and in a row.
        self.skipped_steps = 0
        self.skipped_in_a_row = 0
        self.distributed = None  # a `distributed.Distributed` when training on several ranks (set by the trainer)

    @property
    def fast(self) -> bool:
        """True when this step takes the fast path (see the module docstring)."""
        return self.fast_capable and not self.extra_losses

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group (times its ``lr_scale``: `finetune.lr_scale`)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def forward(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's (logits, values) on `obs`, ready for a loss and `step`."""
        if self.fast:
            with torch.no_grad():
                logits, values, self.saved = self.policy.forward_saving_activations(obs)
            return logits.requires_grad_(), values.requires_grad_()
        with self.autocast():
            return self.policy(obs)

    def forward_sequence(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """A recurrent policy's (actor outputs, values) over a batch of whole env sequences
        (`RolloutBuffer.sequence_batch`), flat in time-major order like the batch's other tensors."""
        with self.autocast():
            params, values, _ = self.policy.sequence(batch["obs"], batch["initial_state"], batch["episode_starts"])
        return params, values

    def backward(self, loss: torch.Tensor, outputs: tuple[torch.Tensor, torch.Tensor],
                 output_gradients: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """Set every parameter's ``.grad`` to the gradient of `loss` (fast path: see the module docstring)."""
        if not self.fast:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return
        if output_gradients is None:
            d_logits, d_values = torch.autograd.grad(loss, outputs, allow_unused=True)
            d_logits = torch.zeros_like(outputs[0]) if d_logits is None else d_logits
            d_values = torch.zeros_like(outputs[1]) if d_values is None else d_values
            output_gradients = (d_logits, d_values)
        self.policy.backward_from_outputs(self.saved, *output_gradients)
        self.saved = None

    def add_extra_losses(self, terms: dict[str, torch.Tensor], outputs: tuple[torch.Tensor, torch.Tensor],
                         batch: dict) -> None:
        """Add the `extra_losses` terms of this batch to `terms` (in place)."""
        for extra in self.extra_losses:
            terms.update(extra(*outputs, batch))

    def step(self, terms: dict[str, torch.Tensor], outputs: tuple[torch.Tensor, torch.Tensor],
             output_gradients: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
        """Backward through the ``loss_*`` terms, check, clip and step; False if the step was skipped.

        `output_gradients`: the loss's gradient w.r.t. (logits, values) in closed form, used on the
        fast path instead of autograd over the loss ops (the algorithm vouches that it is exact).
        """
        loss = total_loss(terms)
        self.backward(loss, outputs, output_gradients)
        if self.distributed is not None and self.distributed.enabled:  # every rank steps with the mean gradient
            loss = self.distributed.average_gradients(self.parameters, loss)
        with_grad = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        grads = [self.parameters[i].grad for i in with_grad]
        norms = torch._foreach_norm(grads)
        # One device sync per step: the loss and the gradient norm, checked together.
        loss_value, grad_norm = torch.stack([loss.detach().float(), torch.linalg.vector_norm(torch.stack(norms))]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.skipped_steps += 1
            self.skipped_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=True)  # drop the bad gradient
            return False
        self.skipped_in_a_row = 0
        self.last_norms, self.last_with_grad, self.grad_norm = norms, with_grad, grad_norm
        scale_gradients(grads, grad_norm, self.max_grad_norm)
        if self.fast:
            adam_step(self.optimizer)  # `optimizer.step()` itself for anything but a hook-free fused Adam
        else:
            self.optimizer.step()
        return True

    def module_grad_norms(self) -> dict[str, float]:
        """Gradient norm of each top-level module of the policy at the last step, before clipping."""
        if self.last_norms is None:
            return {}
        squares = torch.stack(self.last_norms).float().square().cpu()
        owner = self.owner[self.last_with_grad]
        per_module = torch.zeros(len(self.module_names)).index_add_(0, owner, squares).sqrt()
        present = set(owner.tolist())
        return {name: norm for i, (name, norm) in enumerate(zip(self.module_names, per_module.tolist())) if i in present}

    def state_dict(self) -> dict:
        """The optimiser and the skip counters."""
        return {"optimizer": self.optimizer.state_dict(), "skipped_steps": self.skipped_steps,
                "skipped_in_a_row": self.skipped_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s output."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.skipped_steps = state["skipped_steps"]
        self.skipped_in_a_row = state["skipped_in_a_row"]


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, <= 0 a useless one."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


class StepMetrics:
    """Per-step loss terms summed on the device (no sync per step); `means` reads them once."""

    def __init__(self):
        self.sums: torch.Tensor | None = None
        self.names: list[str] = []
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one applied step's terms."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        self.sums = values if self.sums is None else self.sums + values
        self.names, self.count = list(terms), self.count + 1

    def means(self) -> dict[str, float]:
        """Each term's mean over the steps added (empty when none was)."""
        return mean_metrics(self.sums, self.names, self.count)


class ShuffledUpdates:
    """What algorithms that shuffle a rollout into minibatches share: the shuffling generator
    and the state to continue exactly (needs ``gradient``, ``generator`` and ``clock``)."""

    def seed(self, seed: int) -> None:
        """Seed the minibatch shuffling."""
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: optimiser, schedule position, shuffling RNG."""
        return {**self.gradient.state_dict(), "generator": self.generator.get_state(), "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by `state_dict`."""
        self.gradient.load_state_dict(state)
        self.generator.set_state(state["generator"])
        self.clock.load_state_dict(state["clock"])


def mean_metrics(sums: torch.Tensor | None, names: list[str], count: int) -> dict[str, float]:
    """Means of per-step metrics summed on the device (one sync)."""
    return dict(zip(names, (sums / count).tolist())) if count else {}
