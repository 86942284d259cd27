"""The built-in `goto` task as standard gymnasium environments, for other libraries.

- `GotoGymEnv`: a single `gymnasium.Env` (numpy observations), registered as ``mmrl/GoTo-v0``;
- `GotoVectorEnv`: a `gymnasium.vector.VectorEnv` over the batched torch env (same-step
  auto-reset; the last observation of a finished episode is in ``info["final_obs"]``).

Observations are a Dict of ``image`` (uint8 RGB) and ``mission`` (int64 token ids; decode with
`WordTokenizer.decode`).
"""

from __future__ import annotations

import numpy as np
import torch
import gymnasium as gym
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from .goto import ACTION_NAMES, GotoEnv
from ..text import VOCAB_SIZE


def _spaces(env: GotoEnv) -> gym.spaces.Dict:
    (side, _, _), _ = env.observation_spec["image"]
    (tokens,), _ = env.observation_spec["mission"]
    return gym.spaces.Dict({
        "image": gym.spaces.Box(0, 255, (side, side, 3), np.uint8),
        "mission": gym.spaces.Box(0, VOCAB_SIZE - 1, (tokens,), np.int64),
    })


def _numpy(obs: dict[str, torch.Tensor], single: bool = False) -> dict[str, np.ndarray]:
    """Numpy copies of a torch observation dict (`single`: drop the batch dimension)."""
    return {k: (v[0] if single else v).cpu().numpy().copy() for k, v in obs.items()}


class GotoGymEnv(gym.Env):
    """One `goto` level at a time, as a standard gymnasium env."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, split: str = "train", **goto_kwargs):
        self.env = GotoEnv(1, split=split, pool_size=1, **goto_kwargs)
        self.observation_space = _spaces(self.env)
        self.action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(0, 2**31 - 1))
        obs = self.env.reset(seed=seed)
        return _numpy(obs, single=True), {"level_id": int(self.env.level_id[0])}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(torch.tensor([int(action)]))
        out = {}
        if len(info["done_index"]):
            # The batched env has already started the next level; a gymnasium env must not.
            obs = info["final_obs"]
            out["success"] = bool(info["success"][0])
        return _numpy(obs, single=True), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out

    def render(self):
        return self.env.image[0].cpu().numpy().copy()


class GotoVectorEnv(gym.vector.VectorEnv):
    """`num_envs` goto levels stepped as one batch of tensors, behind gymnasium's vector API."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, device: str = "cpu", **goto_kwargs):
        self.env = GotoEnv(num_envs, device=device, **goto_kwargs)
        self.num_envs = num_envs
        self.single_observation_space = _spaces(self.env)
        self.single_action_space = gym.spaces.Discrete(len(ACTION_NAMES))
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.spaces.MultiDiscrete(np.full(num_envs, len(ACTION_NAMES)))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs = self.env.reset(seed=seed)
        return _numpy(obs), {}

    def step(self, actions):
        actions = torch.as_tensor(np.asarray(actions), dtype=torch.int64, device=self.env.device)
        obs, reward, terminated, truncated, info = self.env.step(actions)
        infos = {}
        if len(info["done_index"]):
            index = info["done_index"].cpu().numpy()
            final = np.empty(self.num_envs, dtype=object)
            finals = _numpy(info["final_obs"])
            for j, i in enumerate(index):
                final[i] = {k: v[j] for k, v in finals.items()}
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[index] = True
            infos = {"final_obs": final, "_final_obs": mask}
        return (_numpy(obs), reward.cpu().numpy(), terminated.cpu().numpy(), truncated.cpu().numpy(), infos)


def register() -> None:
    """Register ``mmrl/GoTo-v0`` (single env with a vector entry point) and ``mmrl/MemoryCue-v0``
    (MiniGrid's Memory with the cue in the first view only; needs minigrid) with gymnasium."""
    if "mmrl/GoTo-v0" not in gym.registry:
        gym.register(
            id="mmrl/GoTo-v0",
            entry_point="mmrl_cli.envs.gym_api:GotoGymEnv",
            vector_entry_point="mmrl_cli.envs.gym_api:GotoVectorEnv",
        )
    if "mmrl/MemoryCue-v0" not in gym.registry:
        gym.register(id="mmrl/MemoryCue-v0", entry_point="mmrl_cli.envs.memory_cue:MemoryCueEnv")
