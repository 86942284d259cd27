"""``mmrl/MemoryCue-v0``: MiniGrid's Memory task with the cue shown only in the first observation.

MiniGrid's ``MiniGrid-MemoryS7-v0`` starts the agent anywhere along the start room's row, facing
the hallway, so in most episodes it must first turn round to find the cue (a green key or
ball in the start room's corner), which makes it an exploration problem as much as a memory one.
This variant (a `MemoryEnv` subclass: same grid, objects, rewards, time limit and symbolic
observations) always starts the agent beside the cue, facing the hallway: the cue is in its
first view and, once it walks on, never again (the walls hide it). At the end of the hallway it
must step next to the object that matches the cue (reward ``1 - 0.9 * steps / max_steps``), or
next to the other one (reward 0, episode over). A policy without memory sees the same thing at
the split whichever the cue was, so it can do no better than chance (0.5); one that remembers
the first observation can solve it. ``size`` (odd, >= 7) sets the hallway's length: the cue must
be kept for about ``size - 2`` steps. Used by ``exp=minigrid-memory`` and
``scripts/bench_memory.py``; registered only as an entry-point string (minigrid is imported when
the env is made).
"""

from __future__ import annotations

import numpy as np
from minigrid.core.world_object import Ball, Key
from minigrid.envs.memory import MemoryEnv


class MemoryCueEnv(MemoryEnv):
    """`MemoryEnv` with the agent starting next to the cue, facing the hallway (see the module docstring)."""

    def __init__(self, size: int = 9, shuffle_ends: bool = True, max_steps: int | None = None, **kwargs):
        if size < 7 or size % 2 == 0:
            raise ValueError(f"size: expected an odd size of at least 7, got {size}")
        self.shuffle_ends = shuffle_ends
        super().__init__(size=size, random_length=False, max_steps=max_steps, **kwargs)

    def _gen_grid(self, width: int, height: int) -> None:
        super()._gen_grid(width, height)
        self.agent_pos = np.array((1, height // 2))  # just below the cue at (1, height // 2 - 1)
        self.agent_dir = 0  # facing the hallway: the cue is beside the agent, in its first view only
        if not self.shuffle_ends:  # a T-maze: the key always at the top end, the ball at the bottom
            x, cue = width - 2, type(self.grid.get(1, height // 2 - 1))
            top, bottom = (x, height // 2 - 2), (x, height // 2 + 2)
            self.grid.set(*top, Key("green"))
            self.grid.set(*bottom, Ball("green"))
            above, below = (top[0], top[1] + 1), (bottom[0], bottom[1] - 1)
            self.success_pos, self.failure_pos = (above, below) if cue is Key else (below, above)
