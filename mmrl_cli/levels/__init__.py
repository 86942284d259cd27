"""Which levels training plays: level samplers (uniform, PLR) and curricula, wired to the env.

`attach_levels(cfg, env, seed)` is the one entry point (the trainer calls it right after
making the training env, before the collector's first reset). It gives the env what it asks at
each reset (``env.level_sampler``: the next level ids) and returns a `LevelControl`, which is at
once a trainer callback and part of the collector's checkpointed state (``env.level_control``):

- the collector keeps each transition's level id (the env's per-step field ``level_id``) and
  tells the control which episodes ended (``episodes_ended``: their success, for a curriculum);
- after each update the control's ``on_advantages(rollout)`` turns the rollout's advantages into
  per-episode PLR scores (`scoring.EpisodeScorer`) and hands them to the sampler;
- ``on_update`` moves the curriculum on (``env.set_stage``), reports the stage as the metric
  ``curriculum_stage`` (TensorBoard and the live view) and, with ``data.curriculum_stop``, stops
  the run once the last stage is mastered.

Several ranks: every rank has its own sampler, scores and curriculum over its own envs' episodes
(per-rank PLR, as level-replay's per-actor bookkeeping; nothing is reduced across ranks).

Samplers are picked by name from the plain registry `SAMPLERS`.
"""

from __future__ import annotations

from ..errors import StopTraining
from .curriculum import Curriculum, stages_of
from .samplers import PLRSampler, UniformSampler
from .scoring import EpisodeScorer

SAMPLERS = {"uniform": UniformSampler, "plr": PLRSampler}


def make_sampler(data_cfg, seed: int):
    """The sampler `data.level_sampler` names over the `data.num_train_levels` training levels."""
    if data_cfg.level_sampler == "plr":
        return PLRSampler(data_cfg.num_train_levels, seed, score=data_cfg.plr_score, temperature=data_cfg.plr_temperature,
                          staleness_coef=data_cfg.plr_staleness_coef,
                          staleness_temperature=data_cfg.plr_staleness_temperature, alpha=data_cfg.plr_alpha,
                          replay_schedule=data_cfg.plr_replay_schedule, replay_prob=data_cfg.plr_replay_prob)
    return SAMPLERS[data_cfg.level_sampler](data_cfg.num_train_levels, seed)


def needs_control(data_cfg) -> bool:
    """True when training levels are chosen by something other than the env's own uniform draw."""
    return getattr(data_cfg, "level_sampler", "uniform") != "uniform" or getattr(data_cfg, "curriculum", "none") != "none"


class LevelControl:
    """The run's level sampler, PLR scorer and curriculum (any may be None), as one callback."""

    def __init__(self, env, sampler=None, scorer: EpisodeScorer | None = None, curriculum: Curriculum | None = None,
                 stop_when_mastered: bool = False):
        self.env, self.sampler, self.scorer, self.curriculum = env, sampler, scorer, curriculum
        self.stop_when_mastered = stop_when_mastered
        self.pending: list = []  # successes of episodes finished since the last update (for the curriculum)

    # ------------------------------------------------------------------ collector side
    def episodes_ended(self, info: dict) -> None:
        """Note the success of the episodes that ended in this env step."""
        if self.curriculum is not None and info.get("success") is not None:
            self.pending.append(info["success"])

    # ---------------------------------------------------------------- callback side
    def on_advantages(self, rollout) -> None:
        """Score the levels of the episodes this rollout finished (PLR), from its GAE advantages."""
        if self.scorer is None:
            return
        level_ids, scores = self.scorer.finished(rollout.advantages, rollout.dones, rollout.step_fields["level_id"])
        self.sampler.update_scores(level_ids, scores)

    def on_update(self, progress, metrics: dict) -> None:
        """Move the curriculum on when due; report the stage (and PLR's share of seen levels)."""
        if self.sampler is not None and hasattr(self.sampler, "seen"):
            metrics["plr_seen_levels"] = float(self.sampler.seen.double().mean())
        curriculum = self.curriculum
        if curriculum is None:
            return
        for successes in self.pending:
            curriculum.record(successes)
        self.pending.clear()
        if curriculum.advance(progress.steps):
            self.env.set_stage(curriculum.stages[curriculum.stage])
        metrics["curriculum_stage"] = float(curriculum.stage)
        if curriculum.mastered and self.stop_when_mastered:
            raise StopTraining(f"curriculum: the last stage is mastered (training success >= {curriculum.threshold} "
                               f"over {curriculum.window} episodes)")

    # ------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The sampler's, the scorer's and the curriculum's state (those present)."""
        parts = {"sampler": self.sampler, "scorer": self.scorer, "curriculum": self.curriculum}
        return {name: part.state_dict() for name, part in parts.items() if part is not None}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output; the env is put back on the saved stage (before the
        env's own state is loaded, which then restores its pool exactly)."""
        for name in ("sampler", "scorer", "curriculum"):
            part = getattr(self, name)
            if part is not None:
                part.load_state_dict(state[name])
        if self.curriculum is not None:
            self.env.set_stage(self.curriculum.stages[self.curriculum.stage])


def attach_levels(data_cfg, env, seed: int) -> list:
    """Give the training env its level sampler and curriculum stage; the callbacks that drive them
    (none on the default path: uniform levels, no curriculum, the env untouched)."""
    if not needs_control(data_cfg):
        return []
    sampler = make_sampler(data_cfg, seed) if data_cfg.level_sampler != "uniform" else None
    scorer = EpisodeScorer(env.num_envs, data_cfg.plr_score) if data_cfg.level_sampler == "plr" else None
    curriculum = None
    if data_cfg.curriculum != "none":
        curriculum = Curriculum(stages_of(data_cfg), data_cfg.curriculum, data_cfg.curriculum_threshold,
                                data_cfg.curriculum_window, data_cfg.curriculum_stage_steps)
        env.set_stage(curriculum.stages[0])
    if sampler is not None:
        env.level_sampler = sampler
    control = LevelControl(env, sampler, scorer, curriculum, data_cfg.curriculum_stop)
    env.level_control = control
    return [control]


__all__ = ["SAMPLERS", "Curriculum", "EpisodeScorer", "LevelControl", "PLRSampler", "UniformSampler", "attach_levels",
           "make_sampler", "needs_control", "stages_of"]
