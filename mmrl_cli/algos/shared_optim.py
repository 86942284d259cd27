"""Optimisers whose statistics live in shared memory, for A3C's Hogwild updates.

As ikostrikov/pytorch-a3c's SharedRMSprop/SharedAdam and TorchRL's A3C example: the optimiser's
state (RMSprop's square averages, Adam's moments and step counts) is created once, in the
coordinator, then moved into shared memory; every worker builds its own optimiser object over
the shared parameters and adopts those same state tensors (`adopt_state`), so each worker's
``step()`` updates the one set of statistics in place, without locks.

A worker computes gradients on its local copy of the policy; `HogwildOptimizer` is what that
copy's `GradientStep` steps: it points each shared parameter's ``.grad`` at the local gradient
(process-local memory) and steps the shared optimiser.
"""

from __future__ import annotations

import torch


def init_state(optimizer: torch.optim.Optimizer) -> None:
    """Create every parameter's optimiser state now, as a first step would, without changing
    anything: one step with zero gradients (RMSprop and Adam leave the parameters and their
    averages at 0), then the step counts back to 0."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [p.grad for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p, grad in zip(params, saved):
        p.grad = grad
    for entry in optimizer.state.values():
        if "step" in entry:
            step = entry["step"]
            entry["step"] = step.zero_() if isinstance(step, torch.Tensor) else 0


def share_state(optimizer: torch.optim.Optimizer) -> None:
    """Move every tensor of the optimiser's state into shared memory, in place."""
    for entry in optimizer.state.values():
        for value in entry.values():
            if isinstance(value, torch.Tensor):
                value.share_memory_()


def state_tensors(optimizer: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    """Each parameter's state (in parameter order), to send to a worker: `adopt_state`'s input."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return [dict(optimizer.state[p]) for p in params]


def adopt_state(optimizer: torch.optim.Optimizer, states: list[dict[str, torch.Tensor]]) -> None:
    """Use `states` (another process's shared tensors, `state_tensors` order) as this optimiser's state."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if len(params) != len(states):
        raise ValueError(f"{len(states)} optimiser states for {len(params)} parameters")
    for p, entry in zip(params, states):
        optimizer.state[p] = dict(entry)


class HogwildOptimizer:
    """Steps a shared optimiser with the gradients of a local copy of its parameters.

    Offers what `GradientStep` uses of an optimiser (``param_groups``, ``state``, ``zero_grad``,
    ``step``): ``zero_grad`` clears the local gradients; ``step`` points every shared parameter's
    ``.grad`` at its local gradient and steps the shared optimiser (no lock: Hogwild).
    """

    def __init__(self, shared: torch.optim.Optimizer, local_params: list[torch.Tensor]):
        self.shared, self.local_params = shared, list(local_params)
        self.shared_params = [p for group in shared.param_groups for p in group["params"]]
        if len(self.shared_params) != len(self.local_params):
            raise ValueError(f"{len(self.local_params)} local parameters for {len(self.shared_params)} shared ones")

    @property
    def param_groups(self) -> list[dict]:
        """The shared optimiser's parameter groups (this process's copy: its learning rate is set here)."""
        return self.shared.param_groups

    @property
    def state(self) -> dict:
        """The shared optimiser's state (tensors in shared memory)."""
        return self.shared.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the local gradients."""
        for p in self.local_params:
            p.grad = None

    def step(self) -> None:
        """Apply the local gradients to the shared parameters with the shared statistics."""
        for local, shared in zip(self.local_params, self.shared_params):
            shared.grad = local.grad
        self.shared.step()
        for shared in self.shared_params:
            shared.grad = None
