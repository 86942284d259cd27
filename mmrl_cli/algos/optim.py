"""Gradient clipping and Adam steps without torch's per-call bookkeeping.

At the sizes PPO often trains (a 64-64 MLP on CartPole), `nn.utils.clip_grad_norm_` and
`Optimizer.step` spend far longer grouping tensors, checking flags and looking up state than
their fused kernels spend computing (Adam: ~120 us around a ~20 us kernel). These functions
call the same kernels directly; tests check that the results are bit-identical to torch's.
"""

from __future__ import annotations

import torch

def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all `tensors` together, computed as `nn.utils.clip_grad_norm_` does (norm of per-tensor norms).

    Without clip_grad_norm_'s per-call grouping of tensors by device and dtype, which costs
    more than the arithmetic on small models.
    """
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def scale_gradients(grads: list[torch.Tensor], norm: float, max_norm: float) -> None:
    """Scale `grads`, whose global norm is `norm`, so it becomes at most `max_norm` (clip_grad_norm_'s rule)."""
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        torch._foreach_mul_(grads, scale)


def has_step_hooks(optimizer: torch.optim.Optimizer) -> bool:
    """True when step hooks are registered on `optimizer` or on all optimisers (a shortcut would skip them)."""
    from torch.optim import optimizer as optimizer_module

    return bool(optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or optimizer_module._global_optimizer_pre_hooks or optimizer_module._global_optimizer_post_hooks)


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` for a fused Adam with one parameter group, calling the fused kernel directly.

    Parameters without a gradient are left alone, as `step()` does. The first step (which
    creates the optimiser state) and anything this shortcut does not cover (another optimiser,
    several groups, AMSGrad, maximize, not fused, registered step hooks) go through
    `optimizer.step()` itself.
    """
    group = optimizer.param_groups[0]
    params = [p for p in group["params"] if p.grad is not None]
    states = [optimizer.state.get(p) for p in params]
    if (not isinstance(optimizer, torch.optim.Adam) or len(optimizer.param_groups) > 1 or not group.get("fused")
            or group["amsgrad"] or group["maximize"] or not all(states) or has_step_hooks(optimizer)):
        optimizer.step()
        return
    steps = [state["step"] for state in states]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    torch._fused_adam_(
        params, [p.grad for p in params], [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states], [], steps, lr=group["lr"], beta1=beta1, beta2=beta2,
        weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False, maximize=False,
    )
