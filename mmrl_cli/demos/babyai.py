"""Demonstrations of BabyAI levels by minigrid's own expert, `minigrid.utils.baby_ai_bot.BabyAIBot`.

The bot reads a level's instruction tree and plans with breadth-first searches over what it
has seen; it is the expert the BabyAI authors generated their demonstrations with. One episode:
reset the env with the episode's seed, then ask the bot for an action (``replan()``) and step,
until the episode ends. Episode k of a split resets with seed ``seed + SPLIT_SEED_OFFSETS[split] + k``
(the seed ranges mmrl's gymnasium envs keep apart per split), so any episode can be regenerated.

Observations are recorded exactly as mmrl's gymnasium adapter feeds a policy in RL
(`describe_observations` decides the keys once, `GymObservations` converts, tokenising the
mission), and actions as the policy's indices (the adapter adds the action space's start), so
a policy trained on the demos sees the inputs of ``data=gym data.env_id=<the same id>``.

BabyAI levels print "Sampling rejected" while generating a level; that goes to a buffer.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch

from ..envs import split_seed
from ..envs.gym_adapter import (SUCCESS_INFO_KEYS, SUCCESS_RULES, GymObservations, describe_observations, env_family,
                                import_env_packages)
from .dataset import DemoError, concat_blocks

EXPERT_NAME = "babyai-bot"
MAX_EPISODE_STEPS = 100_000  # BabyAI levels end at their own time limit long before this


def quiet():
    """A context in which prints (BabyAI's "Sampling rejected") go to a buffer, not the terminal."""
    return contextlib.redirect_stdout(io.StringIO())


def is_babyai_level(env) -> bool:
    """True for BabyAI levels: minigrid envs with an instruction tree the bot can follow."""
    try:
        from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel
    except ImportError:
        return False
    return isinstance(env.unwrapped, RoomGridLevel)


class BabyAIExpert:
    """Records episodes of BabyAI's bot on a BabyAI level, one episode after another."""

    name = EXPERT_NAME

    def __init__(self, data_cfg, split: str = "train", seed: int = 1):
        import gymnasium as gym
        import minigrid

        import_env_packages()
        self.env_id = data_cfg.env_id
        self.env = gym.make(data_cfg.env_id, **dict(data_cfg.env_kwargs))
        if not is_babyai_level(self.env):
            self.env.close()
            raise DemoError(f"data: no expert for {data_cfg.env_id} (the BabyAI bot follows the instructions of "
                            "BabyAI levels; this env has none)")
        layout = describe_observations(self.env, data_cfg.image, data_cfg.constant_mission)
        self.observations = GymObservations(layout, data_cfg.mission_tokens, "cpu")
        self.observation_spec = self.observations.spec
        self.num_actions = int(self.env.action_space.n)
        self.action_start = int(self.env.action_space.start)
        self.success_rule = SUCCESS_RULES.get(env_family(self.env))
        self.split, self.seed = split, seed
        self.first_seed = split_seed(data_cfg, seed, split)
        self.description = {"name": EXPERT_NAME, "minigrid": minigrid.__version__}

    def levels(self) -> dict:
        """Which levels the episodes play, as recorded in the dataset's manifest."""
        return {"split": self.split, "seed": self.seed, "kind": "env seed",
                "rule": f"episode k resets the env with seed {self.first_seed} + k"}

    def episode_seed(self, k: int) -> int:
        """The seed episode `k` resets the env with."""
        return self.first_seed + k

    def success(self, terminated: bool, truncated: bool, reward: float, info: dict) -> bool:
        """Success of an episode that just ended: the env's own flag, else its family's rule (as in RL)."""
        for key in SUCCESS_INFO_KEYS:
            if key in info:
                return bool(info[key])
        if self.success_rule is None:
            return False
        return bool(self.success_rule(np.bool_(terminated), np.bool_(truncated), np.float64(reward)))

    def play(self, seed: int) -> dict:
        """One episode from `seed`: raw observations, policy actions, rewards, and how it ended.

        If the bot cannot go on (it raises), the episode ends there: cut (``truncated``) and a failure.
        """
        from minigrid.utils.baby_ai_bot import BabyAIBot

        with quiet():
            obs, _ = self.env.reset(seed=seed)
        bot = BabyAIBot(self.env)
        observations, actions, rewards = [], [], []
        terminated = truncated = False
        success = False
        while not (terminated or truncated):
            try:
                action = int(bot.replan())
            except Exception as e:  # the bot's planning has known dead ends on a few levels
                if not actions:
                    raise DemoError(f"{self.env_id} seed {seed}: the BabyAI bot failed at the first step ({e})") from None
                truncated = True
                break
            observations.append(obs)
            actions.append(action - self.action_start)
            with quiet():
                obs, reward, terminated, truncated, info = self.env.step(action)
            rewards.append(float(reward))
            if terminated or truncated:
                success = self.success(terminated, truncated, reward, info)
            elif len(actions) >= MAX_EPISODE_STEPS:
                raise DemoError(f"{self.env_id} seed {seed}: no end after {MAX_EPISODE_STEPS} steps")
        return {"observations": observations, "actions": actions, "rewards": rewards, "truncated": truncated,
                "success": success}

    def episode_block(self, k: int) -> dict[str, torch.Tensor]:
        """Episode `k` as a block of shard tensors (see `dataset.BLOCK_KEYS`)."""
        seed = self.episode_seed(k)
        episode = self.play(seed)
        length = len(episode["actions"])
        obs = self.observations.to_torch(self.observations.stack(episode["observations"]), length)
        dones = torch.zeros(length, dtype=torch.bool)
        dones[-1] = True
        truncated = torch.zeros(length, dtype=torch.bool)
        truncated[-1] = episode["truncated"]
        rewards = torch.tensor(episode["rewards"], dtype=torch.float64)
        block = {f"obs.{key}": value for key, value in obs.items()}
        block.update(
            actions=torch.tensor(episode["actions"], dtype=torch.int64), rewards=rewards.float(), dones=dones,
            truncated=truncated, episode_ids=torch.full((length,), k, dtype=torch.int64),
            returns=rewards.sum().float().view(1), lengths=torch.tensor([length]),
            success=torch.tensor([episode["success"]]), levels=torch.tensor([seed], dtype=torch.int64),
        )
        return block

    def record(self, first: int, count: int, progress=None) -> dict[str, torch.Tensor]:
        """Episodes ``first .. first + count - 1`` as one block of tensors; `progress(episodes,
        successes)` is called after each episode."""
        blocks = []
        for k in range(first, first + count):
            blocks.append(self.episode_block(k))
            if progress is not None:
                progress(1, int(blocks[-1]["success"]))
        return concat_blocks(blocks)

    def close(self) -> None:
        """Close the env."""
        self.env.close()
