"""The error every pre-flight check raises: a user-facing config problem, one line naming the key.

A leaf module (no imports from mmrl), so that any layer can raise it; `config` re-exports it.
`StopTraining` lives here too, so that callbacks below the trainer (a curriculum that is done)
can stop a run; `trainer` re-exports it.
"""


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key."""


class StopTraining(Exception):
    """Raised by a callback to stop the run cleanly (after a checkpoint); the message is the reason."""
