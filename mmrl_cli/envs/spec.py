"""What an env gives and takes, without building it: its observation spec and action space.

Pre-flight checks, dataset checks and the sweep's trials ask here instead of branching on
`data.type` themselves. Gymnasium ids are made once to check the id, its kwargs and its spaces.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributions import ActionSpace
from ..errors import ConfigError


@dataclass(frozen=True)
class EnvTraits:
    """What an env kind can do, declared here once instead of callers branching on `data.type`."""

    numbered_levels: bool  # levels have ids (the built-in task): training on a finite subset, per-level demos
    size_keys: tuple[str, ...]  # config keys that set the observation size (what a memory error blames)
    buffers_per_env: int  # observation-sized buffers one env of the batch holds (memory estimates)
    max_eval_envs: int | None  # envs an evaluation steps at once at most (None: one per episode)


TRAITS = {
    "goto": EnvTraits(numbered_levels=True, size_keys=("data.grid_size", "data.tile_size"), buffers_per_env=4,
                      max_eval_envs=None),  # batched in torch: an env per episode is cheap
    "cartpole": EnvTraits(numbered_levels=False, size_keys=(), buffers_per_env=1, max_eval_envs=64),
    "gym": EnvTraits(numbered_levels=False, size_keys=(), buffers_per_env=1, max_eval_envs=64),
}


def traits_of(data_cfg) -> EnvTraits:
    """The `EnvTraits` of the env `data_cfg` names."""
    return TRAITS[data_cfg.type]


def eval_envs(data_cfg, episodes: int) -> int:
    """How many envs an evaluation of `episodes` episodes steps at once."""
    limit = traits_of(data_cfg).max_eval_envs
    return episodes if limit is None else min(episodes, limit)


def trains_on_level_subset(data_cfg) -> bool:
    """True when training plays a finite set of levels (then a generalisation gap means something): the
    built-in task's level ids, or a gymnasium env's reset seeds."""
    return getattr(data_cfg, "num_train_levels", 0) > 0


def patch_size_of(data_cfg, spec: dict) -> int:
    """The ViT patch size for this env's observations: the built-in task's tile (a patch is a
    cell), one cell of a symbolic grid, else the default for the image size; ConfigError when
    the image is not a whole number of patches."""
    from ..models.patches import default_patch_size

    if data_cfg.type == "goto":
        return data_cfg.tile_size
    if "image" not in spec:
        return 1
    height, width = spec["image"][0][:2]
    patch = default_patch_size(height, width)
    if height % patch or width % patch:
        raise ConfigError(f"model: a {height}x{width} image is not a whole number of {patch}-pixel ViT patches (try model=cnn)")
    return patch


def observation_spec_of(data_cfg, tokenizer=None) -> tuple[dict, ActionSpace]:
    """The observation spec and action space of the env `data_cfg` names, without building it
    (instructions as ids of `tokenizer`, the model's; None: the built-in word tokenizer)."""
    import torch

    from ..text import WordTokenizer

    tokenizer = tokenizer or WordTokenizer()
    if data_cfg.type == "goto":
        from .goto import ACTION_NAMES, mission_length

        side = data_cfg.grid_size * data_cfg.tile_size
        tokens = mission_length(tokenizer, data_cfg.wordings)
        spec = {"image": ((side, side, 3), torch.uint8), "mission": ((tokens,), torch.int64)}
        if data_cfg.sequence_steps:  # the sequential task: the whole instruction, its clauses, the steps done
            from .goto_seq import MAX_SEQUENCE_STEPS, sequence_mission_length

            steps = MAX_SEQUENCE_STEPS  # shapes of the longest instruction, whatever sequence_steps is
            spec.update(mission=((sequence_mission_length(tokenizer, data_cfg.wordings, steps),), torch.int64),
                        subgoals=((steps, tokens), torch.int64), progress=((1,), torch.int64))
        return spec, ActionSpace.discrete(len(ACTION_NAMES))
    if data_cfg.type == "cartpole":
        return {"vector": ((4,), torch.float32)}, ActionSpace.discrete(2)
    return gym_observations(data_cfg, tokenizer)


def gym_observations(data_cfg, tokenizer=None) -> tuple[dict, ActionSpace]:
    """Observation spec mmrl would feed from a gymnasium env id, and its action space.

    Makes the env once to check the id, its kwargs, and that its spaces are ones mmrl handles.
    """
    import gymnasium as gym

    from .gym_adapter import (GymObservations, UnsupportedEnvError, action_space_of, describe_observations,
                                   import_env_packages, make_quiet)

    import_env_packages()
    if data_cfg.env_id not in gym.registry:
        raise ConfigError(f"data.env_id: {data_cfg.env_id!r} is not a registered gymnasium env id")
    try:
        env = make_quiet(data_cfg.env_id, **dict(data_cfg.env_kwargs))
    except Exception as e:  # a bad kwarg, a missing dependency, ...
        raise ConfigError(f"data.env_kwargs: gymnasium could not make {data_cfg.env_id}: {str(e).splitlines()[0]}") from None
    try:
        try:
            actions = action_space_of(env.action_space, data_cfg.env_id, data_cfg.action_squash)
            layout = describe_observations(env, data_cfg.image, data_cfg.constant_mission)
        except UnsupportedEnvError as e:
            raise ConfigError(f"data.env_id: {str(e) if str(e).startswith(data_cfg.env_id) else f'{data_cfg.env_id}: {e}'}") from None
    finally:
        env.close()
    spec = GymObservations(layout, data_cfg.mission_tokens, "cpu", tokenizer).spec
    check_stage_ids(data_cfg, spec, actions, tokenizer)
    return spec, actions


def check_stage_ids(data_cfg, spec: dict, actions: ActionSpace, tokenizer) -> None:
    """A gymnasium curriculum's env ids: registered, and seen by a policy exactly as the target env
    (the same observation spec and actions); ConfigError naming the stage otherwise."""
    if getattr(data_cfg, "curriculum", "none") == "none":
        return
    import dataclasses

    import gymnasium as gym

    for index, env_id in enumerate(data_cfg.curriculum_stages):
        key = f"data.curriculum_stages.{index}"
        if env_id not in gym.registry:
            raise ConfigError(f"{key}: {env_id!r} is not a registered gymnasium env id")
        stage_spec, stage_actions = gym_observations(dataclasses.replace(data_cfg, env_id=env_id, curriculum="none",
                                                                         curriculum_stages=[]), tokenizer)
        if stage_spec != spec or repr(stage_actions) != repr(actions):
            raise ConfigError(f"{key}: {env_id} does not look like {data_cfg.env_id} to the policy (observations "
                              f"{stage_spec} vs {spec}); every stage needs the same observation and action spaces")
