"""The error every pre-flight check raises: a user-facing config problem, one line naming the key.

A leaf module (no imports from mmrl), so that any layer can raise it; `config` re-exports it.
"""


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line naming the key."""
