"""The subcommands of `mmrl`: each module holds a command's pre-flight check (`check_<command>`:
one ConfigError line naming the key, nothing created) and its Hydra task (`<command>_task`).
`mmrl_cli.cli` lists them; the work itself lives in the trainer, evaluation, sweep, compress and
demos modules below.
"""
