"""mmrl: a config-driven runner for training multimodal transformer policies with RL.

The Python entry point needs no Hydra app::

    from mmrl_cli import compose_train_config, train
    summary = train(compose_train_config(["algo=a2c"]), "runs/demo", callbacks=[...])
"""

from .compose import compose_train_config
from .config import A2CConfig, ConfigError, PPOConfig, RolloutConfig, TrainConfig

__all__ = ["A2CConfig", "ConfigError", "NumericalFault", "PPOConfig", "RolloutConfig", "StopTraining", "TrainConfig",
           "compose_train_config", "train"]


def __getattr__(name: str):
    """`train`, `StopTraining` and `NumericalFault` import torch: only when asked for (keeps `mmrl --help` fast)."""
    if name in ("train", "StopTraining", "NumericalFault"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'mmrl_cli' has no attribute {name!r}")
