"""Build what a config names: the device, the autocast context, the env and its policy."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .config import TrainConfig
from .envs import make_env
from .models import build_policy
from .models.patches import default_patch_size


def pick_device(hardware) -> torch.device:
    """The torch device `hardware.device` names (`auto`: CUDA if available, else CPU). On CUDA,
    fp32 matrix products use TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation)."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if hardware.device == "auto" else hardware.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts for the chosen precision (fp32: no autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def patch_size_for(env) -> int:
    """ViT patch size: the built-in env's tile (a patch is a cell), else the default for the image."""
    if hasattr(env, "tile_size"):
        return env.tile_size
    if "grid" in env.observation_spec:
        return 1  # a symbolic grid: a patch is a cell
    if "image" not in env.observation_spec:
        return 1  # no image: only non-ViT models get here
    height, width, _ = env.observation_spec["image"][0]
    return default_patch_size(height, width)


def build_env_and_policy(cfg: TrainConfig, num_envs: int, device: torch.device, split: str = "train", seed: int | None = None):
    """The batched env and a matching freshly initialised policy on `device`."""
    env = make_env(cfg.data, num_envs, device, cfg.seed if seed is None else seed, split)
    policy = build_policy(cfg.model, env.observation_spec, env.action_spec, patch_size_for(env))
    return env, policy.to(device)


def policy_for_weights(cfg: TrainConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The policy `cfg` builds, shaped like the weights file `weights` when that file says it was
    structurally compressed (pruned units, factorised layers); not loaded."""
    from .compress.structure import adopt_saved_structure

    env, policy = build_env_and_policy(cfg, 1, device)
    if hasattr(env, "close"):
        env.close()
    adopt_saved_structure(policy, weights)
    return policy.to(device)
