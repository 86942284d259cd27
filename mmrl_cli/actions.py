"""Categorical action selection shared by rollouts, evaluation and GIF recording."""

from __future__ import annotations

import torch


def sample_actions(logits: torch.Tensor, deterministic: bool = False,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or take the argmax of) categorical actions; return them with their log-probs.

    `generator` makes the draws reproducible independently of torch's global generator.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    if deterministic:
        actions = log_p.argmax(-1)
    else:
        actions = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
    return actions, log_p.gather(1, actions.unsqueeze(1)).squeeze(1)
