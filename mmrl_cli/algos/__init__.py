"""RL algorithms: `ALGOS` maps each algorithm name to its class.

Every algorithm follows `base.Algorithm` (built by ``cls.build(setup)``; ``modules``,
``train_step``, state, data-source state; see `base`). The on-policy ones (`base.OnPolicy`) are
also ``cls(section, policy, total_updates, autocast, fast_path)`` with ``update(rollout) ->
metrics``, a ``gradient`` (`GradientStep`: skip counters, gradient norms, `extra_losses`) and a
``clock`` (`TrainingClock`: how much of training remains, for annealed hyperparameters). The
trainer's loop is the same for all of them.
"""

from .a2c import A2C
from .a3c import A3C
from .bc import BC
from .base import Algorithm, AlgorithmFault, OnPolicy, Setup
from .distill import Distill
from .dreamer import Dreamer
from .hierarchical import Hierarchical
from .ppo import PPO

# "distill" is chosen by compression=distill (it learns from a teacher, not from rewards) and
# reads its settings from the compression section.
ALGOS = {"ppo": PPO, "a2c": A2C, "a3c": A3C, "bc": BC, "distill": Distill, "dreamer": Dreamer,
         "hierarchical": Hierarchical}


def algorithm_name(cfg) -> str:
    """The algorithm a run trains with: `algo.type`, or distillation under compression=distill."""
    return "distill" if cfg.compression.type == "distill" else cfg.algo.type


__all__ = ["ALGOS", "Algorithm", "AlgorithmFault", "OnPolicy", "Setup", "algorithm_name"]
