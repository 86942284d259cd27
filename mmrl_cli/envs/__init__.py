"""Batched environments: the built-in multimodal `goto` task, CartPole, any gymnasium env.

`make_env` builds the env a `data` config names. Every env here is batched and speaks torch:
``reset() -> obs dict``, ``step(actions) -> (obs, reward, terminated, truncated, info)`` with
same-step auto-reset, plus ``observation_spec``, ``action_spec`` (an `ActionSpace`) and ``num_envs``.
"""

from __future__ import annotations

import torch

from .cartpole import CartPoleEnv
from .goto import GotoEnv
from .goto_seq import GotoSeqEnv
from .gym_adapter import GymVectorEnv, UnsupportedEnvError
from .gym_api import GotoGymEnv, GotoVectorEnv, register

register()

# Envs without level ids (CartPole, gymnasium ids) play each split from its own range of seeds.
SPLIT_SEED_OFFSETS = {"train": 0, "validation": 1_000_000, "heldout": 2_000_000}


def split_seed(data_cfg, seed: int, split: str) -> int:
    """The seed `split`'s envs start from: `seed` itself for the built-in task (its splits differ
    by level content), else ``seed + SPLIT_SEED_OFFSETS[split]`` (splits differ by seed range)."""
    return seed if data_cfg.type == "goto" else seed + SPLIT_SEED_OFFSETS[split]  # new-wordings: goto only


def make_env(data_cfg, num_envs: int, device: torch.device, seed: int, split: str = "train", tokenizer=None):
    """Build the batched env of `data_cfg`; `split` picks training, validation or held-out levels
    (or, on the built-in task, held-out levels in new wordings). Instructions are token ids of
    `tokenizer` (the model's, `text.tokenizer_for(cfg.model)`; None: the built-in word tokenizer).

    The built-in task keeps the splits apart by level content (see envs/goto.py); the others
    by seed range (`split_seed`). Reset it with ``seed=split_seed(...)``, never the bare seed.
    """
    if data_cfg.type == "goto" and data_cfg.sequence_steps:  # the sequential task (envs/goto_seq.py)
        return GotoSeqEnv(
            num_envs, sequence_steps=tuple(data_cfg.sequence_steps), grid_size=data_cfg.grid_size,
            num_distractors=data_cfg.num_distractors, max_steps=data_cfg.max_steps, tile_size=data_cfg.tile_size,
            num_walls=data_cfg.num_walls, num_train_levels=data_cfg.num_train_levels, min_distractors=data_cfg.min_distractors,
            split=split, device=device,
            seed=seed, wordings=data_cfg.wordings, tokenizer=tokenizer,
        )
    if data_cfg.type == "goto":
        return GotoEnv(
            num_envs, grid_size=data_cfg.grid_size, num_distractors=data_cfg.num_distractors,
            max_steps=data_cfg.max_steps, tile_size=data_cfg.tile_size, num_walls=data_cfg.num_walls,
            num_train_levels=data_cfg.num_train_levels, min_distractors=data_cfg.min_distractors, split=split, device=device, seed=seed,
            wordings=data_cfg.wordings, tokenizer=tokenizer,
        )
    if data_cfg.type == "cartpole":
        return CartPoleEnv(num_envs, max_steps=data_cfg.max_steps, device=device, seed=split_seed(data_cfg, seed, split))
    return GymVectorEnv(
        data_cfg.env_id, num_envs, device, seed=split_seed(data_cfg, seed, split), env_kwargs=dict(data_cfg.env_kwargs),
        mission_tokens=data_cfg.mission_tokens, vectorization=data_cfg.vectorization, image_kind=data_cfg.image,
        constant_mission=data_cfg.constant_mission, action_squash=data_cfg.action_squash, tokenizer=tokenizer,
        **gym_levels(data_cfg, split),
    )


def gym_levels(data_cfg, split: str) -> dict:
    """What a gymnasium env of `split` plays beyond its own seeding: the training seed set
    (`data.num_train_levels`, training split only) and a curriculum's env ids (training split only:
    validation and held-out episodes play the configured env id)."""
    if split != "train":
        return {}
    stages = tuple(data_cfg.curriculum_stages) + (data_cfg.env_id,) if data_cfg.curriculum != "none" else ()
    return {"num_train_levels": data_cfg.num_train_levels, "stage_ids": stages}


__all__ = ["SPLIT_SEED_OFFSETS", "split_seed", "CartPoleEnv", "GotoEnv", "GotoSeqEnv", "GotoGymEnv", "GotoVectorEnv", "GymVectorEnv", "UnsupportedEnvError", "make_env"]
