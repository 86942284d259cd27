"""PLR's per-level scores from a rollout: each finished episode's mean per-transition score.

A transition's score is what Prioritised Level Replay calls the level's learning potential at
that step: ``value_l1`` = |GAE advantage| (= |return - value|, the L1 value loss) or
``positive_value_loss`` = max(GAE advantage, 0). An episode's score is the mean over its
transitions; an episode that goes on past the rollout's end carries its running sum and count
into the next rollout (level-replay's partial scores), so long episodes are scored whole.
"""

from __future__ import annotations

import torch

SCORES = ("value_l1", "positive_value_loss")


def transition_scores(advantages: torch.Tensor, kind: str) -> torch.Tensor:
    """(n_steps, n_envs) score of every transition from its GAE advantage."""
    if kind == "value_l1":
        return advantages.abs()
    if kind == "positive_value_loss":
        return advantages.clamp(min=0)
    raise ValueError(f"unknown PLR score {kind!r} (expected one of {', '.join(SCORES)})")


class EpisodeScorer:
    """Per-episode mean scores of a batch of envs' rollouts, with unfinished episodes carried over."""

    def __init__(self, n_envs: int, kind: str):
        self.kind = kind
        self.partial_sum = torch.zeros(n_envs, dtype=torch.float64)
        self.partial_count = torch.zeros(n_envs, dtype=torch.float64)

    def finished(self, advantages: torch.Tensor, dones: torch.Tensor, level_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(level ids, mean scores) of the episodes that ended in this rollout, in the order they ended
        (by step, then env). `advantages`, `dones` and `level_ids` are (n_steps, n_envs); `level_ids[t]`
        is the level of the episode transition t belongs to."""
        scores = transition_scores(advantages.detach().cpu().double(), self.kind)
        done = dones.detach().cpu() > 0
        level_ids = level_ids.detach().cpu()
        n_steps, n_envs = scores.shape
        # Segment k of env e: the transitions after its k-th episode end in this rollout.
        segment = done.long().cumsum(0) - done.long()
        key = (torch.arange(n_envs) * (n_steps + 1))[None, :] + segment
        slots = n_envs * (n_steps + 1)
        sums = torch.zeros(slots, dtype=torch.float64).index_add_(0, key.flatten(), scores.flatten())
        counts = torch.zeros(slots, dtype=torch.float64).index_add_(0, key.flatten(), torch.ones(n_steps * n_envs, dtype=torch.float64))
        first = torch.arange(n_envs) * (n_steps + 1)  # each env's first segment continues its carried episode
        sums[first] += self.partial_sum
        counts[first] += self.partial_count
        steps, envs = torch.nonzero(done, as_tuple=True)  # row-major: by step, then env
        ended = key[steps, envs]
        result = (level_ids[steps, envs].long(), sums[ended] / counts[ended])
        last = key[-1] + done[-1].long()  # the segment still running at the rollout's end (maybe empty)
        self.partial_sum, self.partial_count = sums[last].clone(), counts[last].clone()
        return result

    def state_dict(self) -> dict:
        """The running sums and counts of unfinished episodes."""
        return {"partial_sum": self.partial_sum.clone(), "partial_count": self.partial_count.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        self.partial_sum = state["partial_sum"].clone()
        self.partial_count = state["partial_count"].clone()
