"""Any gymnasium env id as a batched torch env, through gymnasium's vector API.

Supported observations: a Box image (H, W, C) -> ``image``; a Box vector -> ``vector``; a Dict
holding an ``image`` and a text ``mission`` (MiniGrid/BabyAI) -> ``image`` + ``mission`` token
ids from the download-free word tokenizer. Actions must be Discrete.

Sub-environments auto-reset in the same step (gymnasium's SAME_STEP mode), so the adapter
speaks exactly like the built-in env: the last observation of a finished episode comes back in
``info["final_obs"]``.
"""

from __future__ import annotations

import numpy as np
import torch
import gymnasium as gym
from gymnasium.vector import AutoresetMode

from .tokenizer import WordTokenizer


class UnsupportedEnvError(ValueError):
    """The gymnasium env's spaces are not ones mmrl can feed to a policy."""


def _import_env_packages() -> None:
    """Register optional env families (MiniGrid/BabyAI) if they are installed."""
    try:
        import minigrid  # noqa: F401
    except ImportError:
        pass


class GymObservations:
    """Turns gymnasium observations of one space into mmrl's torch observation dict."""

    def __init__(self, space: gym.Space, mission_tokens: int, device: torch.device, env_id: str = "env"):
        self.device = torch.device(device)
        self.tokenizer = None
        if isinstance(space, gym.spaces.Dict) and "image" in space.spaces:
            self.kind = "dict"
            spec = {"image": (space["image"].shape, torch.uint8)}
            if "mission" in space.spaces:
                self.tokenizer = WordTokenizer(mission_tokens)
                spec["mission"] = ((mission_tokens,), torch.int64)
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8:
            self.kind, spec = "image", {"image": (space.shape, torch.uint8)}
        elif isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            self.kind, spec = "vector", {"vector": (space.shape, torch.float32)}
        else:
            raise UnsupportedEnvError(f"{env_id}: unsupported observation space {space}")
        self.spec = spec

    def to_torch(self, obs) -> dict[str, torch.Tensor]:
        """Convert a batched gymnasium observation."""
        if self.kind == "vector":
            return {"vector": torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)}
        if self.kind == "image":
            return {"image": torch.as_tensor(obs, device=self.device)}
        out = {"image": torch.as_tensor(obs["image"], device=self.device)}
        if self.tokenizer is not None:
            out["mission"] = self.tokenizer.encode_batch(list(obs["mission"])).to(self.device)
        return out

    def single_to_torch(self, obs) -> dict[str, torch.Tensor]:
        """Convert the observation of one (unbatched) env, as a batch of one."""
        if self.kind == "dict":
            batch = {"image": np.asarray(obs["image"])[None]}
            if self.tokenizer is not None:
                batch["mission"] = [obs["mission"]]
            return self.to_torch(batch)
        return self.to_torch(np.asarray(obs)[None])


class GymVectorEnv:
    """A gymnasium vector env presented as batched torch tensors."""

    bootstrap_time_limit = True  # gymnasium's truncation means "cut by a time limit"

    def __init__(self, env_id: str, num_envs: int, device: torch.device, seed: int = 0,
                 env_kwargs: dict | None = None, mission_tokens: int = 16, vectorization: str = "sync"):
        _import_env_packages()
        self.env_id, self.device, self.seed = env_id, torch.device(device), seed
        self.vec = gym.make_vec(
            env_id, num_envs=num_envs, vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **(env_kwargs or {}),
        )
        self.num_envs = num_envs
        space = self.vec.single_observation_space
        if not isinstance(self.vec.single_action_space, gym.spaces.Discrete):
            raise UnsupportedEnvError(f"{env_id}: mmrl needs a Discrete action space, got {self.vec.single_action_space}")
        self.num_actions = int(self.vec.single_action_space.n)
        self.observations = GymObservations(space, mission_tokens, self.device, env_id)
        self.observation_spec = self.observations.spec
        self.episode_return = np.zeros(num_envs, dtype=np.float64)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    def to_torch(self, obs) -> dict[str, torch.Tensor]:
        """Convert a (batched) gymnasium observation to the torch observation dict."""
        return self.observations.to_torch(obs)

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Reset every sub-environment (seeded with seed, seed + 1, ...)."""
        obs, _ = self.vec.reset(seed=self.seed if seed is None else seed)
        self.episode_return[:] = 0
        self.episode_length[:] = 0
        return self.to_torch(obs)

    def step(self, actions: torch.Tensor):
        """Step all sub-environments; same return convention as the built-in env."""
        obs, reward, terminated, truncated, info = self.vec.step(actions.cpu().numpy())
        self.episode_return += reward
        self.episode_length += 1
        done = np.logical_or(terminated, truncated)
        done_index = np.flatnonzero(done)
        out = {
            "done_index": torch.as_tensor(done_index, device=self.device),
            "episode_return": torch.as_tensor(self.episode_return[done_index], dtype=torch.float32, device=self.device),
            "episode_length": torch.as_tensor(self.episode_length[done_index], device=self.device),
            "success": torch.as_tensor(terminated[done_index] & (reward[done_index] > 0), device=self.device),
        }
        if len(done_index):
            finals = [info["final_obs"][i] for i in done_index]
            if self.observations.kind == "dict":
                batched = {"image": np.stack([f["image"] for f in finals])}
                if self.observations.tokenizer is not None:
                    batched["mission"] = [f["mission"] for f in finals]
                out["final_obs"] = self.to_torch(batched)
            else:
                out["final_obs"] = self.to_torch(np.stack(finals))
            self.episode_return[done_index] = 0
            self.episode_length[done_index] = 0
        to = lambda x, dt: torch.as_tensor(x, dtype=dt, device=self.device)  # noqa: E731
        return self.to_torch(obs), to(reward, torch.float32), to(terminated, torch.bool), to(truncated, torch.bool), out

    def close(self) -> None:
        self.vec.close()
