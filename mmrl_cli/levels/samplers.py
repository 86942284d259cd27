"""Level samplers: which training level a sub-environment plays next, asked at every reset.

A sampler draws level ids in ``[0, num_levels)`` (the built-in task's level ids; a gymnasium
env's training seeds). `UniformSampler` draws them uniformly; `PLRSampler` is Prioritised Level
Replay (Jiang, Grefenstette & Rocktaschel 2021; facebookresearch/level-replay's
``LevelSampler``): levels the agent can still learn much from (a large value error) are replayed
more often. Every sampler has its own CPU generator and a `state_dict`, so a resumed run draws
exactly the levels the uninterrupted one would have.

PLR, as in the paper and its code:

- a *score* per level, from the transitions of its last episode (`update_scores`):
  ``value_l1`` (mean |GAE advantage|) or ``positive_value_loss`` (mean max(advantage, 0)),
  blended into the old score as ``(1 - alpha) * old + alpha * new``;
- a replay distribution over the levels *seen* so far: the rank transform
  ``h(S_i) = 1 / rank(S_i)``, sharpened by the temperature ``beta`` (``h ** (1 / beta)``),
  normalised, mixed with a staleness term (``staleness_i ** (1 / T_s)``, normalised; the staleness is
  the number of draws since level i was last drawn) as ``P = (1 - rho) * P_S + rho * P_C``;
- a replay decision per draw: replay a seen level with probability ``|seen| / |levels|``
  (``proportionate``, the paper's) or a fixed ``replay_prob`` (``fixed``); otherwise draw an
  unseen level uniformly (all seen: always replay).
"""

from __future__ import annotations

import torch

from ..rng import load_generator_state


class UniformSampler:
    """Every training level equally likely (the default, as a sampler object for gymnasium seeds)."""

    def __init__(self, num_levels: int, seed: int):
        self.num_levels = num_levels
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)

    def sample(self, count: int) -> torch.Tensor:
        """Level ids of the next `count` episodes."""
        return torch.randint(0, self.num_levels, (count,), generator=self.generator)

    def update_scores(self, level_ids: torch.Tensor, scores: torch.Tensor) -> None:
        """Uniform sampling ignores scores."""

    def state_dict(self) -> dict:
        """The generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        load_generator_state(self.generator, state["generator"])


def rank_weights(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """PLR's rank transform: ``(1 / rank) ** (1 / temperature)``, rank 1 the highest score (ties: the
    higher level id ranks first, as level-replay's ``np.flip(scores.argsort())`` with a stable sort)."""
    order = torch.argsort(scores, stable=True).flip(0)  # level ids, best first
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    return (1.0 / ranks) ** (1.0 / temperature)


def power_weights(values: torch.Tensor, temperature: float) -> torch.Tensor:
    """``max(value, 0) ** (1 / temperature)`` (level-replay's ``power`` transform, used for staleness)."""
    return values.clamp(min=0) ** (1.0 / temperature)


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """`weights` over their sum (left as zeros when they sum to zero)."""
    total = weights.sum()
    return weights / total if total > 0 else weights


class PLRSampler:
    """Prioritised Level Replay over `num_levels` levels (see the module docstring for the rules)."""

    def __init__(self, num_levels: int, seed: int, score: str = "value_l1", temperature: float = 0.1,
                 staleness_coef: float = 0.1, staleness_temperature: float = 1.0, alpha: float = 1.0,
                 replay_schedule: str = "proportionate", replay_prob: float = 0.5):
        self.num_levels, self.score = num_levels, score
        self.temperature, self.staleness_coef, self.staleness_temperature = temperature, staleness_coef, staleness_temperature
        self.alpha, self.replay_schedule, self.replay_prob = alpha, replay_schedule, replay_prob
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.scores = torch.zeros(num_levels, dtype=torch.float64)
        self.seen = torch.zeros(num_levels, dtype=torch.bool)
        self.staleness = torch.zeros(num_levels, dtype=torch.float64)  # draws since each level was last drawn

    # ------------------------------------------------------------------------- sampling
    def replay_distribution(self) -> torch.Tensor:
        """P(level) when replaying: rank-prioritised scores mixed with staleness, over seen levels only."""
        unseen = (~self.seen).double()
        score_part = normalised(rank_weights(self.scores, self.temperature) * (1 - unseen))
        if self.staleness_coef <= 0:
            return score_part
        stale_part = normalised(power_weights(self.staleness, self.staleness_temperature) * (1 - unseen))
        return (1 - self.staleness_coef) * score_part + self.staleness_coef * stale_part

    def replay_probability(self) -> float:
        """Probability that the next draw replays a seen level (0 before any is seen, 1 once all are)."""
        seen = int(self.seen.sum())
        if seen == 0:
            return 0.0
        if seen == self.num_levels:
            return 1.0
        return seen / self.num_levels if self.replay_schedule == "proportionate" else self.replay_prob

    def sample_one(self) -> int:
        """One level id: a replayed seen level, or an unseen one drawn uniformly."""
        replay = float(torch.rand((), generator=self.generator, dtype=torch.float64)) < self.replay_probability()
        weights = self.replay_distribution() if replay else (~self.seen).double()
        if weights.sum() <= 0:  # every seen level has weight 0 (staleness and scores all zero): any seen one
            weights = self.seen.double()
        level = int(torch.multinomial(weights, 1, generator=self.generator))
        self.staleness += 1
        self.staleness[level] = 0
        return level

    def sample(self, count: int) -> torch.Tensor:
        """Level ids of the next `count` episodes (drawn one by one: staleness changes with each)."""
        return torch.tensor([self.sample_one() for _ in range(count)], dtype=torch.int64)

    # ---------------------------------------------------------------------------- scores
    def update_scores(self, level_ids: torch.Tensor, scores: torch.Tensor) -> None:
        """Blend finished episodes' scores into their levels' (in order: a level played twice in one
        rollout keeps the later episode's weight last); the levels count as seen."""
        for level, score in zip(level_ids.tolist(), scores.double().tolist()):
            old = self.scores[level] if self.seen[level] else 0.0
            self.scores[level] = (1 - self.alpha) * old + self.alpha * score
            self.seen[level] = True

    # ----------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Scores, seen flags, staleness and the generator: everything the next draw depends on."""
        return {"scores": self.scores.clone(), "seen": self.seen.clone(), "staleness": self.staleness.clone(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        self.scores.copy_(state["scores"])
        self.seen.copy_(state["seen"])
        self.staleness.copy_(state["staleness"])
        load_generator_state(self.generator, state["generator"])
