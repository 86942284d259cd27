"""RL algorithms: `ALGOS` maps each `algo.type` to its class.

An algorithm owns its losses, its optimiser and its state; it is built as
``ALGOS[type](algo_cfg, policy, total_updates, autocast, fast_path)`` and offers
``update(rollout) -> metrics``, ``seed``, ``state_dict``/``load_state_dict``, a ``gradient``
(`GradientStep`: skip counters, gradient norms, `extra_losses`) and a ``clock`` (`TrainingClock`:
how much of training remains, for annealed hyperparameters). The trainer's loop is the same for all of them.
"""

from .a2c import A2C
from .distill import Distill
from .ppo import PPO

# "distill" is chosen by compression=distill (it learns from a teacher, not from rewards) and
# reads its settings from the compression section.
ALGOS = {"ppo": PPO, "a2c": A2C, "distill": Distill}
