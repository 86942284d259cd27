"""RL algorithms. Each maps a name (`algo.type`) to a class with `update(buffer) -> metrics`."""

from .ppo import PPO

ALGOS = {"ppo": PPO}
