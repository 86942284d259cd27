"""Proximal Policy Optimisation with a clipped surrogate (Schulman et al. 2017).

`ppo_loss` is PPO's loss on one minibatch as a dict of named terms (the ``loss_*`` ones add up
to what autograd differentiates). `PPO.update` runs the epochs of minibatches over a rollout,
with learning-rate and clip-range annealing and an optional target-KL early stop; the step itself
(backward, checks, clipping, Adam) is the shared `GradientStep`.

A recurrent policy (`model.memory`) learns from minibatches of whole env sequences: each is
``batch_size / n_steps`` envs' full rollouts, replayed from the state stored at the rollout's
start with the resets where episodes start (as CleanRL's ppo_atari_lstm minibatches by env).
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import Distributed
from ..rollout import RolloutBuffer
from .base import OnPolicy
from .gradient import GradientStep, ShuffledUpdates, StepMetrics, TrainingClock, explained_variance, scheduled
from ..models.finetune import parameter_groups


def normalized(advantages: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-std advantages (a minibatch of one would be zeroed, so it is left as is)."""
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_loss(dist, values: torch.Tensor, batch: dict, clip_range: float, clip_value: float | None,
             normalize_advantages: bool, vf_coef: float, ent_coef: float) -> dict[str, torch.Tensor]:
    """PPO's loss terms for one minibatch, for any action distribution `dist` (see `distributions`).

    - ``loss_policy``: the negative clipped surrogate ``-mean(min(r A, clip(r, 1-e, 1+e) A))``;
    - ``loss_value``: ``vf_coef * mean((V - R)^2)`` to the GAE returns R (the MSE, as
      Stable-Baselines3 writes it); with `clip_value`, the larger of that error and the error of
      V clipped to ``V_old +- clip_value`` (CleanRL's pessimistic form);
    - ``loss_entropy``: ``-ent_coef * mean(entropy)`` (minimising it raises entropy);
    - diagnostics (no gradient): ``entropy``, ``approx_kl`` (the low-variance estimator
      ``E[(r - 1) - log r]``) and ``clipfrac``.
    """
    log_ratio = dist.log_prob(batch["actions"]) - batch["logprobs"]
    ratio = log_ratio.exp()
    advantages = normalized(batch["advantages"]) if normalize_advantages else batch["advantages"]
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages)

    values = values.float()
    value_error = (values - batch["returns"]).square()
    if clip_value is not None:
        clipped = batch["values"] + (values - batch["values"]).clamp(-clip_value, clip_value)
        value_error = torch.max(value_error, (clipped - batch["returns"]).square())

    entropy = dist.entropy().mean()
    with torch.no_grad():
        ratio_minus_one = ratio - 1
        approx_kl = (ratio_minus_one - log_ratio).mean()
        clipfrac = (ratio_minus_one.abs() > clip_range).float().mean()
    return {
        "loss_policy": -surrogate.mean(),
        "loss_value": vf_coef * value_error.mean(),
        # Without an entropy bonus, its graph is not built (the term is a constant 0).
        "loss_entropy": -ent_coef * entropy if ent_coef else entropy.detach() * 0.0,
        "entropy": entropy.detach(), "approx_kl": approx_kl, "clipfrac": clipfrac,
    }


# The terms `ppo_loss_and_output_gradients` computes, in the order of its per-sample rows.
CLOSED_FORM_TERMS = ("loss_policy", "loss_value", "loss_entropy", "approx_kl", "clipfrac")


@torch.no_grad()
def ppo_loss_and_output_gradients(
    logits: torch.Tensor, values: torch.Tensor, batch: dict, clip_range: float, clip_value: float | None,
    normalize_advantages: bool, vf_coef: float, ent_coef: float,
) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`ppo_loss`'s terms, and the gradient of their sum w.r.t. (logits, values) in closed form.

    The fast path's shortcut for PPO (see `gradient.GradientStep`): one pass of a few dozen
    kernels instead of the loss's autograd graph; tests compare it with autograd of `ppo_loss`.
    For the clipped surrogate, ``-A r / n`` on the taken action's log-probability where the
    unclipped term is the smaller one, times ``onehot(a) - p`` for the logits; ``2 vf_coef (V - R)
    / n`` (or the clipped error inside its range) for the values; ``ent_coef p (log p + H) / n``
    for the entropy bonus.
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
    d_values = error * (2 * vf_coef / n)
    if clip_value is not None:
        change = values - batch["values"]
        error_clipped = batch["values"] + change.clamp(-clip_value, clip_value) - batch["returns"]
        # The larger error is the loss; the clipped one has a gradient only inside its range.
        use_clipped = error_clipped.square() > squared
        squared = torch.maximum(squared, error_clipped.square())
        inside = change.abs() <= clip_value
        d_values = torch.where(use_clipped, error_clipped * inside, error) * (2 * vf_coef / n)

    # Every term is a mean over the minibatch: stack the per-sample values, average once.
    ratio_minus_one = ratio - 1
    per_sample = torch.stack([
        torch.minimum(unclipped, clipped), squared, negative_entropy,
        ratio_minus_one - log_ratio,  # approx_kl
        ratio_minus_one.abs().gt_(clip_range),  # clipped (1.0) or not (0.0)
    ])
    means = per_sample.mean(1)
    scaled = means * means.new_tensor([-1.0, vf_coef, ent_coef, 1.0, 1.0])
    terms = dict(zip(CLOSED_FORM_TERMS, scaled.unbind()))
    terms["entropy"] = -means[2]
    return terms, (d_logits.to(logits.dtype), d_values.to(values_dtype))


class PPO(ShuffledUpdates, OnPolicy):
    """PPO updates of one policy: Adam, LR and clip-range schedules, target-KL early stop."""

    def __init__(self, cfg, policy: nn.Module, total_updates: int, autocast, fast_path: bool = True):
        self.cfg, self.policy = cfg, policy
        # fused=True: one kernel for the whole Adam step instead of several per parameter.
        optimizer = torch.optim.Adam(parameter_groups(policy, cfg.lr), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.gradient = GradientStep(policy, optimizer, cfg.max_grad_norm, autocast, fast_path)
        self.generator = torch.Generator()  # minibatch shuffling
        self.clock = TrainingClock(total_updates)
        self.distributed = Distributed()  # one rank unless the trainer says otherwise

    def update(self, rollout: RolloutBuffer) -> dict[str, float]:
        """Run `n_epochs` of minibatch steps over `rollout`; return the mean metrics.

        A minibatch whose loss or gradient is not finite is skipped (see `GradientStep`).
        """
        cfg = self.cfg
        self.policy.train()
        rollout.compute_advantages(cfg.gamma, cfg.gae_lambda)
        lr = scheduled(cfg.lr, cfg.lr_schedule, self.clock.remaining())
        clip_range = scheduled(cfg.clip_range, cfg.clip_schedule, self.clock.remaining())
        self.gradient.set_lr(lr)
        normalize_each = cfg.normalize_advantages
        dist = self.distributed
        if normalize_each and cfg.batch_size == rollout.n_steps * rollout.n_envs:
            # One minibatch is the whole rollout: normalise its advantages once, not every epoch.
            rollout.advantages = dist.normalized(rollout.advantages) if dist.enabled else normalized(rollout.advantages)
            normalize_each = False
        skipped_before = self.gradient.skipped_steps
        metrics, stopped_early = StepMetrics(), False
        recurrent = rollout.recurrent
        for _epoch in range(cfg.n_epochs):
            batches = (rollout.sequences(cfg.batch_size // rollout.n_steps, self.generator) if recurrent
                       else rollout.minibatches(cfg.batch_size, self.generator))
            for batch in batches:
                if normalize_each and dist.enabled:  # statistics of every rank's minibatch together
                    batch = {**batch, "advantages": dist.normalized(batch["advantages"])}
                outputs = self.gradient.forward_sequence(batch) if recurrent else self.gradient.forward(batch["obs"])
                args = (*outputs, batch, clip_range, cfg.clip_value, normalize_each and not dist.enabled, cfg.vf_coef,
                        cfg.ent_coef)
                if self.gradient.fast:  # the same loss, its gradient w.r.t. the outputs in closed form
                    terms, output_gradients = ppo_loss_and_output_gradients(*args)
                else:
                    terms, output_gradients = ppo_loss(self.policy.distribution(outputs[0]), *args[1:]), None
                    self.gradient.add_extra_losses(terms, outputs, batch)
                if cfg.target_kl is not None and dist.mean(terms["approx_kl"]).item() > 1.5 * cfg.target_kl:
                    stopped_early = True  # the policy already moved too far from the one that collected
                    break
                if self.gradient.step(terms, outputs, output_gradients):
                    metrics.add(terms)  # summed on the device: no sync
            if stopped_early:
                break
        self.clock.tick()
        means = metrics.means()
        means.update(
            grad_norm=self.gradient.grad_norm if metrics.count else float("nan"), learning_rate=lr, clip_range=clip_range,
            explained_variance=explained_variance(rollout.values, rollout.returns),
            minibatches=metrics.count, stopped_early=float(stopped_early),
            skipped_steps=self.gradient.skipped_steps - skipped_before,
        )
        return means
