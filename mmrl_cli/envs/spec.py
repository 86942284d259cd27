"""What an env gives and takes, without building it: its observation spec and action space.

Pre-flight checks, dataset checks and the sweep's trials ask here instead of branching on
`data.type` themselves. Gymnasium ids are made once to check the id, its kwargs and its spaces.
"""

from __future__ import annotations

from ..distributions import ActionSpace
from ..errors import ConfigError


def observation_spec_of(data_cfg) -> tuple[dict, ActionSpace]:
    """The observation spec and action space of the env `data_cfg` names, without building it."""
    import torch

    if data_cfg.type == "goto":
        from .goto import ACTION_NAMES, MISSION_TOKENS

        side = data_cfg.grid_size * data_cfg.tile_size
        spec = {"image": ((side, side, 3), torch.uint8), "mission": ((MISSION_TOKENS,), torch.int64)}
        return spec, ActionSpace.discrete(len(ACTION_NAMES))
    if data_cfg.type == "cartpole":
        return {"vector": ((4,), torch.float32)}, ActionSpace.discrete(2)
    return gym_observations(data_cfg)


def gym_observations(data_cfg) -> tuple[dict, ActionSpace]:
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
    return GymObservations(layout, data_cfg.mission_tokens, "cpu").spec, actions
