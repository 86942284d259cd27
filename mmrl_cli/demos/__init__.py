"""`mmrl demos`: expert demonstrations and the dataset format behaviour cloning reads (docs/demos.md).

Modules: `planner` (the shortest-path expert of the built-in `goto` task, batched in torch),
`babyai` (minigrid's BabyAI bot on BabyAI levels, observations as mmrl's gymnasium adapter feeds
them), `dataset` (the resumable, verified shard writer and the `DemoDataset` reader),
`settings` (the config), `command` (the Hydra task and its pre-flight check).
"""

from .dataset import DemoDataset, DemoError, check_compatible, read_manifest

__all__ = ["DemoDataset", "DemoError", "check_compatible", "read_manifest"]
