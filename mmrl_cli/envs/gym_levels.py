"""Training levels for gymnasium envs: a finite set of reset seeds, and a list of env ids.

A gymnasium env's level is what its reset seed generates (MiniGrid/BabyAI lay out a level from
it), so training on ``data.num_train_levels=N`` levels means resetting only with seeds
``0..N-1``; validation and held-out episodes keep their own seed ranges (``SPLIT_SEED_OFFSETS``,
a million apart). A curriculum over env ids plays one of several envs with the same spaces.

Both work inside gymnasium's vector env, where sub-environments reset themselves in the middle
of ``step``: each sub-environment is wrapped (`PickedResets`, `TaskSwitch`) to ask a shared
`LevelPicker` at every reset, so a level sampler's choice is the level played at once. The
picker lives in this process, so this needs ``vectorization=sync``.
"""

from __future__ import annotations

import gymnasium as gym
import torch


class LevelPicker:
    """What the sub-environments of one vector env play next: a training level (reset seed) drawn by
    ``sampler`` (uniform over ``num_levels`` by default; a level sampler may replace it) and the
    current task (index into the env ids)."""

    def __init__(self, num_envs: int, num_levels: int, seed: int):
        self.num_levels = num_levels
        self.sampler = None  # None: uniform draws from `generator`
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.task = 0
        self.level_id = torch.full((num_envs,), -1, dtype=torch.int64)  # each sub-environment's current level

    def next_seed(self, index: int) -> int | None:
        """The reset seed of sub-environment `index`'s next episode (None: no finite level set)."""
        if not self.num_levels:
            return None
        if self.sampler is not None:
            level = int(self.sampler.sample(1)[0])
        else:
            level = int(torch.randint(0, self.num_levels, (), generator=self.generator))
        self.level_id[index] = level
        return level


class PickedResets(gym.Wrapper):
    """Resets its env with the seed the picker draws (a training level), whatever seed it was given."""

    def __init__(self, env: gym.Env, picker: LevelPicker, index: int):
        super().__init__(env)
        self.picker, self.index = picker, index

    def reset(self, *, seed=None, options=None):
        """Reset on the picker's next level (or with `seed` when the picker has no level set)."""
        level = self.picker.next_seed(self.index)
        return self.env.reset(seed=seed if level is None else level, options=options)


class TaskSwitch(gym.Env):
    """Several envs with the same spaces behind one; each reset switches to the picker's current task.

    Spaces are the last env's (the target task's). Every env gets its own seed the first time a seed
    is given, so an env first played mid-run is seeded as reproducibly as the first.
    """

    def __init__(self, envs: list[gym.Env], picker: LevelPicker):
        self.envs, self.picker = envs, picker
        self.active = envs[min(picker.task, len(envs) - 1)]
        self.observation_space, self.action_space = envs[-1].observation_space, envs[-1].action_space
        self.metadata, self.render_mode = envs[-1].metadata, envs[-1].render_mode
        self.seeded = False

    def reset(self, *, seed=None, options=None):
        """Start an episode of the current task."""
        if seed is not None and not self.seeded:
            for k, env in enumerate(self.envs):
                env.reset(seed=seed + 7919 * (k + 1))
            self.seeded = True
        self.active = self.envs[min(self.picker.task, len(self.envs) - 1)]
        return self.active.reset(seed=seed, options=options)

    def step(self, action):
        """Step the current task's env."""
        return self.active.step(action)

    def close(self):
        """Close every env."""
        for env in self.envs:
            env.close()
