"""Curriculum: an ordered list of stages, easy to hard, that training moves through.

A stage is a mapping of env settings: the built-in task's difficulty knobs (`GOTO_KNOBS`:
distractors, walls, episode budget; never the grid size, which would change the image and so
the ViT's shapes), or a gymnasium ``env_id`` (BabyAI GoToRedBallGrey -> GoToRedBall ->
GoToLocal share their observation spaces). The config lists the easier stages
(``data.curriculum_stages``); the last stage is always the data config itself, the task that
validation and held-out levels measure.

Two ways to move on (``data.curriculum``):

- ``success``: when the training success rate over the last ``window`` episodes played on the
  current stage reaches ``threshold``;
- ``schedule``: every ``stage_steps`` env steps.

On the last stage, ``success`` mode also reports when the task is *mastered* (the same rule), so
a callback can stop the run (``data.curriculum_stop``).
"""

from __future__ import annotations

import torch

MODES = ("none", "success", "schedule")
GOTO_KNOBS = ("num_distractors", "num_walls", "max_steps")  # what a built-in stage may set


def final_stage(data_cfg) -> dict:
    """The stage the data config itself describes (the target task)."""
    if data_cfg.type == "goto":
        return {name: getattr(data_cfg, name) for name in GOTO_KNOBS}
    return {"env_id": data_cfg.env_id}


def stages_of(data_cfg) -> list[dict]:
    """Every stage of `data_cfg`'s curriculum, easy to hard, the target last (one stage: no curriculum)."""
    if data_cfg.curriculum == "none":
        return [final_stage(data_cfg)]
    target = final_stage(data_cfg)
    listed = [{**target, **stage} if isinstance(stage, dict) else {"env_id": stage} for stage in data_cfg.curriculum_stages]
    return listed + [target]


class Curriculum:
    """Which stage training is on, and when to move on (see the module docstring)."""

    def __init__(self, stages: list[dict], mode: str, threshold: float, window: int, stage_steps: int):
        self.stages, self.mode = stages, mode
        self.threshold, self.window, self.stage_steps = threshold, window, stage_steps
        self.stage = 0
        self.recent = self.empty_window()  # 1/0: successes of the latest episodes on this stage; -1: none yet
        self.mastered = False

    def empty_window(self) -> torch.Tensor:
        """A window with no episodes in it (a fixed size, so checkpoints always have the same shape)."""
        return torch.full((self.window,), -1, dtype=torch.int8)

    @property
    def last(self) -> bool:
        """True on the target stage."""
        return self.stage == len(self.stages) - 1

    def success_rate(self) -> float | None:
        """Success over the last `window` episodes on this stage (None until there are that many)."""
        return float(self.recent.float().mean()) if bool((self.recent >= 0).all()) else None

    def record(self, successes: torch.Tensor) -> None:
        """Add finished training episodes' successes (oldest first)."""
        self.recent = torch.cat([self.recent, successes.detach().cpu().to(torch.int8)])[-self.window:]

    def advance(self, steps: int) -> bool:
        """Move on if due at `steps` env steps (at most one stage per call); True when the stage changed.
        Sets `mastered` when ``success`` mode sees the last stage passed."""
        if self.mode == "schedule":
            due = min(steps // self.stage_steps, len(self.stages) - 1)
            if due > self.stage:
                self.stage += 1
                return True
            return False
        rate = self.success_rate()
        if rate is None or rate < self.threshold:
            return False
        if self.last:
            self.mastered = True
            return False
        self.stage += 1
        self.recent = self.empty_window()
        return True

    def state_dict(self) -> dict:
        """The stage, the recent successes and whether the last stage is mastered."""
        return {"stage": torch.tensor([self.stage, int(self.mastered)]), "recent": self.recent.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output."""
        self.stage, mastered = (int(x) for x in state["stage"])
        self.mastered = bool(mastered)
        self.recent = state["recent"].clone()
