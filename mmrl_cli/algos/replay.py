"""A bounded replay buffer of sequences for world-model learning (`algo=dreamer`).

Each env of the batch has its own ring of ``capacity // num_envs`` rows, so every sequence sampled
from one ring is a stretch of consecutive steps of one env. A row is DreamerV3's layout: the
observation ``obs_t``, the action taken *before* it (``prev_action``: zero at an episode's first
row), the reward that action earned (``reward``), ``is_first`` (the row starts an episode) and
``is_terminal`` (the episode ended here for real: the continuation target is 0). When an episode
ends, its last observation (the env's ``final_obs``) is written as a row of its own, then the
reset observation as the next episode's first row.

Sequences may run over an episode's end into the next episode: ``is_first`` marks where, and the
world model zeroes its state there (the mask); the first row of every sampled sequence is marked
``is_first`` too, as the model starts it from the zero state. Memory is fixed at construction
(`bytes_needed` says how much, checked before a run starts); `state_dict` is plain tensors, saved
with the checkpoint (safetensors, never pickle), so a resumed run samples exactly what it would have.
"""

from __future__ import annotations

import torch

from ..rng import load_generator_state


def bytes_needed(capacity: int, observation_bytes: int, action_size: int) -> int:
    """Bytes a buffer of `capacity` rows holds: the observation, the previous action (float32), the
    reward (float32) and two flags per row."""
    return capacity * (observation_bytes + 4 * action_size + 4 + 2)


class SequenceReplay:
    """Per-env rings of rows (see the module docstring); `add_step` writes one env step of every env,
    `sample(batch, length)` draws `batch` sequences of `length` rows."""

    def __init__(self, capacity: int, num_envs: int, observation_spec: dict, action_size: int,
                 device: torch.device, seed: int):
        self.ring = max(1, capacity // num_envs)  # rows per env
        self.num_envs, self.device = num_envs, device
        shape = (num_envs, self.ring)
        self.obs = {name: torch.zeros(shape + tuple(s), dtype=dtype, device=device)
                    for name, (s, dtype) in observation_spec.items()}
        self.prev_action = torch.zeros(shape + (action_size,), device=device)
        self.reward = torch.zeros(shape, device=device)
        self.is_first = torch.zeros(shape, dtype=torch.bool, device=device)
        self.is_terminal = torch.zeros(shape, dtype=torch.bool, device=device)
        self.cursor = torch.zeros(num_envs, dtype=torch.int64, device=device)  # next row to write, per env
        self.filled = torch.zeros(num_envs, dtype=torch.int64, device=device)  # rows written, at most `ring`
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def write(self, envs: torch.Tensor, obs: dict[str, torch.Tensor], prev_action: torch.Tensor, reward: torch.Tensor,
              is_first: torch.Tensor, is_terminal: torch.Tensor) -> None:
        """Append one row to the ring of each env in `envs` (the other tensors have one row per env in `envs`)."""
        rows = self.cursor[envs]
        for name, value in obs.items():
            self.obs[name][envs, rows] = value.to(self.device, self.obs[name].dtype)
        self.prev_action[envs, rows] = prev_action.to(self.device, torch.float32)
        self.reward[envs, rows] = reward.to(self.device, torch.float32)
        self.is_first[envs, rows] = is_first.to(self.device, torch.bool)
        self.is_terminal[envs, rows] = is_terminal.to(self.device, torch.bool)
        self.cursor[envs] = (rows + 1) % self.ring
        self.filled[envs] = torch.clamp(self.filled[envs] + 1, max=self.ring)

    def add_first(self, obs: dict[str, torch.Tensor], action_size: int) -> None:
        """Every env's first observation after a reset."""
        envs = torch.arange(self.num_envs, device=self.device)
        zeros = torch.zeros(self.num_envs, device=self.device)
        self.write(envs, obs, torch.zeros(self.num_envs, action_size), zeros, torch.ones_like(zeros, dtype=torch.bool),
                   torch.zeros_like(zeros, dtype=torch.bool))

    def add_step(self, actions: torch.Tensor, obs: dict[str, torch.Tensor], reward: torch.Tensor, terminated: torch.Tensor,
                 truncated: torch.Tensor, info: dict) -> None:
        """One env step of every env: `actions` (as the world model reads them, (N, A)) led to `obs`,
        `reward`; where an episode ended, its final observation first, then the reset one as a first row."""
        envs = torch.arange(self.num_envs, device=self.device)
        actions, reward = actions.to(self.device, torch.float32), reward.to(self.device, torch.float32)
        terminated, truncated = terminated.to(self.device), truncated.to(self.device)
        done = terminated | truncated
        if "final_obs" in info and len(info["done_index"]):
            index = info["done_index"].to(self.device)
            self.write(index, info["final_obs"], actions[index], reward[index], torch.zeros_like(index, dtype=torch.bool),
                       terminated[index])
        keep = (~done).float().unsqueeze(-1)
        self.write(envs, obs, actions * keep, reward * (~done).float(), done, torch.zeros_like(done))

    def ready(self, length: int) -> bool:
        """True when every env's ring holds at least `length` rows (sequences can be drawn from any)."""
        return bool((self.filled >= length).all())

    def sample(self, batch: int, length: int) -> dict:
        """`batch` sequences of `length` consecutive rows, time-major: ``obs`` (T, B, ...), ``prev_action``
        (T, B, A), ``reward``, ``is_first`` (row 0 always set), ``is_terminal`` (T, B); and ``env``/``start``."""
        envs = torch.randint(self.num_envs, (batch,), generator=self.generator, device=self.device)
        filled = self.filled[envs]
        # Oldest row of each ring: 0 until it is full, then the cursor (the next row to be overwritten).
        oldest = torch.where(filled == self.ring, self.cursor[envs], torch.zeros_like(filled))
        offset = (torch.rand(batch, generator=self.generator, device=self.device) * (filled - length + 1)).long()
        rows = (oldest + offset).unsqueeze(0) + torch.arange(length, device=self.device).unsqueeze(1)  # (T, B)
        rows = rows % self.ring
        envs_t = envs.unsqueeze(0).expand(length, batch)
        out = {"obs": {name: value[envs_t, rows] for name, value in self.obs.items()},
               "prev_action": self.prev_action[envs_t, rows], "reward": self.reward[envs_t, rows],
               "is_first": self.is_first[envs_t, rows].clone(), "is_terminal": self.is_terminal[envs_t, rows],
               "env": envs, "start": rows[0]}
        out["is_first"][0] = True
        return out

    def __len__(self) -> int:
        """Rows held, all envs together."""
        return int(self.filled.sum())

    def state_dict(self, with_rows: bool = True) -> dict:
        """Cursors, fill counts and the sampling generator; with `with_rows`, the rows themselves."""
        state = {"cursor": self.cursor, "filled": self.filled, "generator": self.generator.get_state()}
        if with_rows:
            state.update(obs=self.obs, prev_action=self.prev_action, reward=self.reward, is_first=self.is_first,
                         is_terminal=self.is_terminal)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()`'s output (without rows: the buffer stays empty and refills)."""
        load_generator_state(self.generator, state["generator"])
        if "obs" not in state:
            return
        self.cursor.copy_(state["cursor"])
        self.filled.copy_(state["filled"])
        for name, value in state["obs"].items():
            self.obs[name].copy_(value)
        for name in ("prev_action", "reward", "is_first", "is_terminal"):
            getattr(self, name).copy_(state[name])

