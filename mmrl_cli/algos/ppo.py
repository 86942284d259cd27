"""Proximal Policy Optimisation with a clipped surrogate (Schulman et al. 2017).

`ppo_losses` computes the named loss terms for one minibatch; `PPO.update` runs the epochs
over a rollout with gradient clipping, learning-rate annealing and a target-KL early stop.
"""

from __future__ import annotations


import torch
from torch import nn

from ..rollout import RolloutBuffer


def log_probs_and_entropy(logits: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `actions` under categorical `logits`, and the entropy."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return log_p.gather(1, actions.unsqueeze(1)).squeeze(1), entropy


def normalized(advantages: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-std advantages (a minibatch of one would be zeroed, so it is left as is)."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_losses(
    logits: torch.Tensor, values: torch.Tensor, batch: dict, clip_range: float,
    clip_value: float | None, normalize_advantages: bool,
) -> dict[str, torch.Tensor]:
    """Named PPO terms for one minibatch: ``loss_*`` (to minimise) and diagnostics.

    - ``loss_policy``: negative clipped surrogate ``min(r A, clip(r, 1-e, 1+e) A)``;
    - ``loss_value``: squared error to the GAE returns, optionally clipped around the old value;
    - ``loss_entropy``: negative mean entropy (minimising it raises entropy);
    - ``approx_kl``: the low-variance estimator ``E[(r - 1) - log r]``; ``clipfrac``.
    """
    new_logprob, entropy = log_probs_and_entropy(logits, batch["actions"])
    log_ratio = new_logprob - batch["logprobs"]
    ratio = log_ratio.exp()
    advantages = batch["advantages"]
    if normalize_advantages:
        advantages = normalized(advantages)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages)
    values = values.float()
    if clip_value is None:
        value_loss = 0.5 * (values - batch["returns"]).pow(2).mean()
    else:
        clipped = batch["values"] + (values - batch["values"]).clamp(-clip_value, clip_value)
        value_loss = 0.5 * torch.max((values - batch["returns"]).pow(2), (clipped - batch["returns"]).pow(2)).mean()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1).abs() > clip_range).float().mean()
    return {
        "loss_policy": -surrogate.mean(), "loss_value": value_loss, "loss_entropy": -entropy.mean(),
        "approx_kl": approx_kl, "clipfrac": clipfrac,
    }


class PPO:
    """PPO updates for one policy; holds the optimiser and the schedules."""

    def __init__(self, cfg, policy: nn.Module, total_updates: int, autocast):
        self.cfg, self.policy, self.total_updates, self.autocast = cfg, policy, total_updates, autocast
        # fused=True: one kernel for the whole Adam step instead of several per parameter.
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.parameters = list(policy.parameters())
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
        names, totals = None, None
        count, skipped, grad_norm, stopped_early = 0, 0, 0.0, False
        normalize_each = cfg.normalize_advantages
        if normalize_each and cfg.batch_size == buffer.n_steps * buffer.n_envs:
            # One minibatch is the whole rollout: normalise its advantages once, not every epoch.
            buffer.advantages = normalized(buffer.advantages)
            normalize_each = False
        for _epoch in range(cfg.n_epochs):
            for batch in buffer.minibatches(cfg.batch_size, self.generator):
                with self.autocast():
                    logits, values = self.policy(batch["obs"])
                terms = ppo_losses(logits, values, batch, clip_range, cfg.clip_value, normalize_each)
                if cfg.target_kl is not None and terms["approx_kl"].item() > 1.5 * cfg.target_kl:
                    stopped_early = True
                    break
                loss = terms["loss_policy"] + cfg.vf_coef * terms["loss_value"]
                if cfg.ent_coef:
                    loss = loss + cfg.ent_coef * terms["loss_entropy"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = clip_grad_norm(self.parameters, cfg.max_grad_norm)
                if not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):
                    skipped += 1
                    self.skipped_in_a_row += 1
                    self.optimizer.zero_grad(set_to_none=True)  # drop the bad gradient
                    continue
                self.skipped_in_a_row = 0
                self.optimizer.step()
                # Sum the terms as one tensor: no device sync and few kernels per minibatch.
                values = torch.stack([value.detach() for value in terms.values()])
                names, totals = list(terms), values if totals is None else totals + values
                count += 1
            if stopped_early:
                break
        if on_gradients is not None and count:
            on_gradients(self.policy)
        self.updates_done += 1
        self.skipped_steps += skipped
        metrics = dict(zip(names, (totals / count).tolist())) if count else {}
        metrics.update(
            grad_norm=float(grad_norm), learning_rate=lr, clip_range=clip_range,
            explained_variance=explained_variance(buffer.values, buffer.returns),
            minibatches=count, stopped_early=float(stopped_early), skipped_steps=skipped,
        )
        return metrics


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global L2 norm is at most `max_norm`; return the norm before.

    The same arithmetic as `nn.utils.clip_grad_norm_` for parameters on one device and dtype,
    without its per-call grouping of tensors, which costs ~140 us per call on small models:
    more than the clipping itself.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, <= 0 a useless one."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


