"""Build what a config names: the device, the autocast context, the env, and its policy through
the one policy pipeline.

The pipeline (`build_policy_from`): the model config and the env's spaces give a fresh policy;
a *source* gives its weights (none: scratch; a checkpoint's `model.safetensors`: an mmrl run, as
resume, init_from, a teacher, eval and the compress report use it); *transforms* then change
the loaded policy (`TRANSFORMS`: structured pruning, low-rank factorisation). A source saved
structurally compressed is rebuilt in its saved shape before its weights are loaded. Every
caller that needs a policy goes through here.
"""

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


def structured_prune(policy: torch.nn.Module, method) -> dict:
    """Transform: remove `method.amount` of the units of every prunable group (lowest norm first)."""
    from .compress.structured import prune_structured

    return {"pruned_groups": prune_structured(policy, method.amount)}


def low_rank(policy: torch.nn.Module, method) -> dict:
    """Transform: factorise the large linear layers (`method.rank` or `method.energy` of the spectrum)."""
    from .compress.lowrank import factorise_policy

    return {"factorised_layers": factorise_policy(policy, method.rank, method.energy, method.min_size)}


# Policy transforms, by name: each changes a loaded policy in place and says what it did (a
# JSON-able dict, saved as <run>/compression.json). A new transform is one function + one entry.
TRANSFORMS = {"prune-structured": structured_prune, "lowrank": low_rank}


def transforms_of(cfg: TrainConfig) -> list[str]:
    """The transforms a run's `compression` asks for when it starts from `init_from`'s weights."""
    method = cfg.compression
    if method.type == "prune" and method.structured:
        return ["prune-structured"]
    if method.type == "lowrank":
        return ["lowrank"]
    return []


def build_policy_from(cfg: TrainConfig, env, device: torch.device, source: Path | None = None,
                      transforms: list[str] = ()) -> tuple[torch.nn.Module, dict]:
    """The policy pipeline: a fresh policy for `cfg.model` and `env`'s spaces; the weights of
    `source` (a `model.safetensors`; None: scratch) loaded into it, in the structure that file
    was saved with; then `transforms` (names in `TRANSFORMS`) with `cfg.compression`'s settings.
    Returns the policy on `device` and what the transforms did."""
    from .checkpoint import load_model
    from .compress.structure import adopt_saved_structure

    policy = build_policy(cfg.model, env.observation_spec, env.action_spec, patch_size_for(env))
    if source is not None:
        adopt_saved_structure(policy, source)
        load_model(source, policy)
    done = {}
    for name in transforms:
        done.update(TRANSFORMS[name](policy, cfg.compression))
    return policy.to(device), done


def build_env_and_policy(cfg: TrainConfig, num_envs: int, device: torch.device, split: str = "train", seed: int | None = None):
    """The batched env and a matching freshly initialised policy on `device`."""
    env = make_env(cfg.data, num_envs, device, cfg.seed if seed is None else seed, split)
    return env, build_policy_from(cfg, env, device)[0]


def policy_for_weights(cfg: TrainConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The policy `cfg` builds, shaped like the weights file `weights` when that file says it was
    structurally compressed (pruned units, factorised layers); not loaded (the weights' fit is
    checked against it first)."""
    from .compress.structure import adopt_saved_structure

    env = make_env(cfg.data, 1, device, cfg.seed, "train")
    try:
        policy = build_policy(cfg.model, env.observation_spec, env.action_spec, patch_size_for(env))
    finally:
        if hasattr(env, "close"):
            env.close()
    adopt_saved_structure(policy, weights)
    return policy.to(device)


def load_policy(cfg: TrainConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The policy of a trained run: `cfg`'s model for its env, with the weights file `weights`
    (in the structure it was saved with) loaded."""
    env = make_env(cfg.data, 1, device, cfg.seed, "train")
    try:
        return build_policy_from(cfg, env, device, source=weights)[0]
    finally:
        if hasattr(env, "close"):
            env.close()
