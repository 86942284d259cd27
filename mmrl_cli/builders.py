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
import sys
from pathlib import Path

import torch

from .config import TrainConfig
from .envs import make_env
from .models import build_policy
from .models.patches import default_patch_size
from .text import tokenizer_for


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


def fresh_policy(cfg: TrainConfig, observation_spec: dict, action_space, patch: int) -> torch.nn.Module:
    """A randomly initialised policy of a run: `cfg.model`'s, or for `algo=dreamer` the Dreamer agent
    (world model, actor, critic) with `cfg.model`'s encoder reading the observations."""
    policy = build_policy(cfg.model, observation_spec, action_space, patch)
    if cfg.algo.type == "dreamer":
        from .models.dreamer import DreamerAgent

        return DreamerAgent(cfg.algo, policy, observation_spec, action_space)
    return policy


def build_policy_from(cfg: TrainConfig, env, device: torch.device, source: Path | None = None,
                      transforms: list[str] = (), towers_if_heads_differ: bool = False) -> tuple[torch.nn.Module, dict]:
    """The policy pipeline: a fresh policy for `cfg.model` and `env`'s spaces (pretrained towers
    included); the weights of `source` (a `model.safetensors`; None: scratch) loaded into it, in
    the structure that file was saved with (`towers_if_heads_differ`, for init_from: when only the
    heads do not fit, e.g. another action space, the towers alone are loaded); then `transforms`
    (names in `TRANSFORMS`) with `cfg.compression`'s settings; then `cfg.finetune` (freezing,
    LoRA, per-part learning rates). Returns the policy on `device` and what the transforms did."""
    from .checkpoint import CheckpointError, load_model
    from .compress.structure import adopt_saved_structure

    policy = fresh_policy(cfg, env.observation_spec, env.action_spec, patch_size_for(env))
    if source is not None:
        adopt_saved_structure(policy, source)
        try:
            load_model(source, policy)
        except CheckpointError:
            if not towers_if_heads_differ or not tower_tensors_fit(source, policy):
                raise
            loaded = load_towers(source, policy)
            print(f"mmrl train: init_from: the heads differ from this run's, so only the towers were loaded "
                  f"({loaded} tensors); the heads start fresh", file=sys.stderr)
    done = {}
    for name in transforms:
        done.update(TRANSFORMS[name](policy, cfg.compression))
    apply_finetune(policy, cfg.finetune)
    return policy.to(device), done


def tower_names(policy: torch.nn.Module) -> list[str]:
    """State-dict names of the policy's towers (the ``vision`` and ``text`` parts, `models.finetune`)."""
    from .models.finetune import parts_of

    towers = {name for part in ("vision", "text") for name in parts_of(policy).get(part, ())}
    return [name for name in policy.state_dict() if name.split(".")[0] in towers]


def tower_tensors_fit(weights: Path, policy: torch.nn.Module) -> bool:
    """True when the weights file holds every tower tensor of `policy`, in the same shape."""
    from .checkpoint import tensor_shapes

    saved, state = tensor_shapes(weights), policy.state_dict()
    names = tower_names(policy)
    return bool(names) and all(tuple(saved.get(n, ())) == tuple(state[n].shape) for n in names)


def load_towers(weights: Path, policy: torch.nn.Module) -> int:
    """Load only the tower tensors of a weights file into `policy` (see `tower_tensors_fit`); returns how many."""
    from .checkpoint import read_weights

    saved = read_weights(weights)
    names = tower_names(policy)
    policy.load_state_dict({n: saved[n] for n in names}, strict=False)
    return len(names)


def apply_finetune(policy: torch.nn.Module, settings) -> None:
    """The `finetune` section: adapters a source brought are kept when this run asks for LoRA
    (a resumed or evaluated LoRA run) and merged into plain weights otherwise (a run starting
    from a LoRA run); then the frozen parts, then this run's adapters where it has none yet."""
    from .models.finetune import add_lora, freeze, has_lora, lora_targets, merge_lora, unchanged_rng

    if has_lora(policy) and not settings.lora_rank:
        merge_lora(policy)
    if settings.freeze:
        freeze(policy, list(settings.freeze))
    policy.lr_scales = dict(settings.lr_scale)  # the algorithms' optimisers read it (`parameter_groups`)
    if settings.lora_rank and not has_lora(policy):
        with unchanged_rng():  # the adapters' init leaves the run's random stream where it was
            add_lora(policy, settings.lora_rank, settings.lora_alpha, settings.lora_dropout,
                     lora_targets(policy, list(settings.lora_targets)), list(settings.lora_train_also))


def build_env_and_policy(cfg: TrainConfig, num_envs: int, device: torch.device, split: str = "train", seed: int | None = None):
    """The batched env and a matching freshly initialised policy on `device`."""
    env = make_env(cfg.data, num_envs, device, cfg.seed if seed is None else seed, split, tokenizer_for(cfg.model))
    return env, build_policy_from(cfg, env, device)[0]


def policy_for_weights(cfg: TrainConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The policy `cfg` builds, shaped like the weights file `weights` when that file says it was
    structurally compressed (pruned units, factorised layers); not loaded (the weights' fit is
    checked against it first)."""
    from .compress.structure import adopt_saved_structure

    env = make_env(cfg.data, 1, device, cfg.seed, "train", tokenizer_for(cfg.model))
    try:
        policy = fresh_policy(cfg, env.observation_spec, env.action_spec, patch_size_for(env))
    finally:
        if hasattr(env, "close"):
            env.close()
    adopt_saved_structure(policy, weights)
    return policy.to(device)


def load_policy(cfg: TrainConfig, weights: Path, device: torch.device) -> torch.nn.Module:
    """The policy of a trained run: `cfg`'s model for its env, with the weights file `weights`
    (in the structure it was saved with) loaded."""
    env = make_env(cfg.data, 1, device, cfg.seed, "train", tokenizer_for(cfg.model))
    try:
        return build_policy_from(cfg, env, device, source=weights)[0]
    finally:
        if hasattr(env, "close"):
            env.close()
