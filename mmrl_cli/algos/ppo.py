"""Proximal Policy Optimisation with a clipped surrogate (Schulman et al. 2017).

`ppo_losses` computes the loss terms for one minibatch together with the gradient of the
total loss with respect to the policy's outputs (logits and values), in closed form. `PPO.update`
runs the epochs over a rollout and passes that gradient on: through the policy's own
hand-written backward where it has one (the MLP), through autograd otherwise; then gradient
clipping, Adam, learning-rate and clip-range annealing and a target-KL early stop.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..rollout import RolloutBuffer
from .optim import adam_step, global_norm, scale_gradients

# The rows of the tensor of loss terms `ppo_losses` returns (and of the update's metrics).
TERM_NAMES = ("loss_policy", "loss_value", "loss_entropy", "approx_kl", "clipfrac")
# Each term is this factor times the mean of a per-sample quantity (see `ppo_losses`).
TERM_SCALES = (-1.0, 0.5, 1.0, 1.0, 1.0)


def normalized(advantages: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-std advantages (a minibatch of one would be zeroed, so it is left as is)."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


@torch.no_grad()
def ppo_losses(
    logits: torch.Tensor, values: torch.Tensor, batch: dict, clip_range: float, clip_value: float | None,
    normalize_advantages: bool, vf_coef: float = 0.5, ent_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's terms for one minibatch and the gradient of its total loss; returns (terms, d_logits, d_values).

    `terms` holds `TERM_NAMES` in order:
    - ``loss_policy``: negative clipped surrogate ``mean(min(r A, clip(r, 1-e, 1+e) A))``;
    - ``loss_value``: ``0.5 * mean((V - R)^2)`` to the GAE returns R, or with `clip_value` the
      larger of that and the error of V clipped to ``V_old +- clip_value``;
    - ``loss_entropy``: negative mean entropy (minimising it raises entropy);
    - ``approx_kl``: the low-variance estimator ``E[(r - 1) - log r]``; ``clipfrac``.
    ``d_logits`` and ``d_values`` are the gradients of ``loss_policy + vf_coef * loss_value +
    ent_coef * loss_entropy`` with respect to `logits` and `values`: exactly what autograd would
    give (tests compare them), with a handful of kernels instead of a graph of them.
    """
    n = len(values)
    actions = batch["actions"].unsqueeze(1)
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    negative_entropy = (p * log_p).sum(-1)
    log_ratio = log_p.gather(1, actions).squeeze(1) - batch["logprobs"]
    ratio = log_ratio.exp()
    advantages = normalized(batch["advantages"]) if normalize_advantages else batch["advantages"]
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_range, 1 + clip_range) * advantages
    # The gradient flows through the unclipped term where it is the smaller one; where both are
    # equal the ratio is inside the clip range (or the advantage is 0), so that is the same.
    d_logprob = torch.where(unclipped <= clipped, unclipped, 0.0).mul_(-1.0 / n)  # d loss / d log pi(a)
    # d log pi(a) / d logits = onehot(a) - p
    d_logits = (p * -d_logprob.unsqueeze(1)).scatter_add_(1, actions, d_logprob.unsqueeze(1))
    if ent_coef:  # d(-H)/d logits = p * (log p + H)
        d_logits += (ent_coef / n) * p * (log_p - negative_entropy.unsqueeze(1))

    values_dtype, values = values.dtype, values.float()
    error = values - batch["returns"]
    squared = error.square()
    d_values = error * (vf_coef / n)
    if clip_value is not None:
        change = values - batch["values"]
        error_clipped = batch["values"] + change.clamp(-clip_value, clip_value) - batch["returns"]
        # The larger error is the loss; the clipped one has a gradient only inside its range.
        use_clipped = error_clipped.square() > squared
        squared = torch.maximum(squared, error_clipped.square())
        inside = change.abs() <= clip_value
        d_values = torch.where(use_clipped, error_clipped * inside, error) * (vf_coef / n)

    # Every term is a mean over the minibatch: stack the per-sample values, average once.
    ratio_minus_one = ratio - 1
    per_sample = torch.stack([
        torch.minimum(unclipped, clipped), squared, negative_entropy,
        ratio_minus_one - log_ratio,  # approx_kl
        ratio_minus_one.abs().gt_(clip_range),  # clipped (1.0) or not (0.0)
    ])
    terms = per_sample.mean(1).mul_(per_sample.new_tensor(TERM_SCALES))
    return terms, d_logits.to(logits.dtype), d_values.to(values_dtype)


class PPO:
    """PPO updates for one policy; holds the optimiser and the schedules."""

    def __init__(self, cfg, policy: nn.Module, total_updates: int, autocast):
        self.cfg, self.policy, self.total_updates, self.autocast = cfg, policy, total_updates, autocast
        # fused=True: one kernel for the whole Adam step instead of several per parameter.
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.parameters = list(policy.parameters())
        # The policy's hand-written backward (the MLP) skips autograd's per-kernel overhead,
        # which dominates at small sizes; it computes in fp32, so it is used without autocast.
        self.analytic = getattr(policy, "analytic_backward", False) and autocast is contextlib.nullcontext
        self.generator = torch.Generator()  # minibatch shuffling
        self.updates_done = 0
        # Gradient steps skipped for a non-finite loss or gradient: in total and in a row.
        self.skipped_steps = 0
        self.skipped_in_a_row = 0

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: optimiser, schedule position, shuffling RNG."""
        return {
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
            "updates_done": self.updates_done, "skipped_steps": self.skipped_steps,
            "skipped_in_a_row": self.skipped_in_a_row,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by `state_dict`."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.updates_done = state["updates_done"]
        self.skipped_steps = state["skipped_steps"]
        self.skipped_in_a_row = state["skipped_in_a_row"]

    def progress_remaining(self) -> float:
        """1 at the start of training, falling linearly towards 0 at the end."""
        return 1.0 - self.updates_done / max(self.total_updates, 1)

    def scheduled(self, value: float, schedule: str) -> float:
        return value * self.progress_remaining() if schedule == "linear" else value

    def forward(self, obs: dict) -> tuple[torch.Tensor, torch.Tensor, list | None]:
        """The policy's logits and values on `obs`, plus what `backward` needs.

        With the policy's hand-written backward the activations are saved and no autograd graph
        is built; otherwise the outputs carry autograd's graph (and the third item is None).
        """
        if self.analytic:
            with torch.no_grad():
                return self.policy.forward_saving_activations(obs)
        with self.autocast():
            logits, values = self.policy(obs)
        return logits, values, None

    def backward(self, logits: torch.Tensor, values: torch.Tensor, saved: list | None,
                 d_logits: torch.Tensor, d_values: torch.Tensor) -> None:
        """Set every parameter's ``.grad`` from the loss's gradient w.r.t. the policy's outputs."""
        if self.analytic:
            self.policy.backward_from_outputs(saved, d_logits, d_values)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward((logits, values), (d_logits, d_values))

    def update(self, buffer: RolloutBuffer, on_gradients=None) -> dict[str, float]:
        """Run `n_epochs` of minibatch updates over `buffer`; return mean metrics.

        `on_gradients(policy)` is called after the last backward pass (for gradient monitoring).
        A minibatch whose loss or gradient is not finite is skipped: no optimiser step, so the
        parameters and the optimiser state stay as they were; `skipped_steps` counts them.
        """
        cfg = self.cfg
        lr = self.scheduled(cfg.lr, cfg.lr_schedule)
        clip_range = self.scheduled(cfg.clip_range, cfg.clip_schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = None
        count, skipped, grad_norm, stopped_early = 0, 0, 0.0, False
        normalize_each = cfg.normalize_advantages
        if normalize_each and cfg.batch_size == buffer.n_steps * buffer.n_envs:
            # One minibatch is the whole rollout: normalise its advantages once, not every epoch.
            buffer.advantages = normalized(buffer.advantages)
            normalize_each = False
        for _epoch in range(cfg.n_epochs):
            for batch in buffer.minibatches(cfg.batch_size, self.generator):
                logits, values, saved = self.forward(batch["obs"])
                terms, d_logits, d_values = ppo_losses(logits.detach(), values.detach(), batch, clip_range,
                                                       cfg.clip_value, normalize_each, cfg.vf_coef, cfg.ent_coef)
                if cfg.target_kl is not None and terms[TERM_NAMES.index("approx_kl")].item() > 1.5 * cfg.target_kl:
                    stopped_early = True
                    break
                self.backward(logits, values, saved, d_logits, d_values)
                grads = [p.grad for p in self.parameters if p.grad is not None]
                # One device sync per step: the loss and the gradient norm, checked, then clipping.
                loss_sum, grad_norm = torch.stack([terms.sum(), global_norm(grads)]).tolist()
                if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                    skipped += 1
                    self.skipped_in_a_row += 1
                    self.optimizer.zero_grad(set_to_none=True)  # drop the bad gradient
                    continue
                self.skipped_in_a_row = 0
                scale_gradients(grads, grad_norm, cfg.max_grad_norm)
                adam_step(self.optimizer)
                totals = terms if totals is None else totals + terms  # summed on the device: no sync
                count += 1
            if stopped_early:
                break
        if on_gradients is not None and count:
            on_gradients(self.policy)
        self.updates_done += 1
        self.skipped_steps += skipped
        metrics = dict(zip(TERM_NAMES, (totals / count).tolist())) if count else {}
        metrics.update(
            grad_norm=grad_norm, learning_rate=lr, clip_range=clip_range,
            explained_variance=explained_variance(buffer.values, buffer.returns),
            minibatches=count, stopped_early=float(stopped_early), skipped_steps=skipped,
        )
        return metrics


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, <= 0 a useless one."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


