"""From command-line overrides to a composed config: the registry of config groups, Hydra
composition with one-line errors (unknown options and keys, moved keys, Hydra's output
settings), and `compose_train_config` (`compose_command_config` for any command) for code that
needs a command's config from overrides.

Imports run one way: this module sits above `config` (the schemas) and below the commands.
"""

from __future__ import annotations

import re
from pathlib import Path

from .config import GROUP_SCHEMAS, ConfigError, TrainConfig, validate

CONF_DIR = Path(__file__).resolve().parent / "conf"
# The one registry of config groups: which groups each command composes (its conf/<command>.yaml
# defaults list, checked by a test); an option of a group is a YAML file in conf/<group>/.
COMMAND_GROUPS = {
    "train": ("algo", "model", "data", "hardware", "compression", "exp"),
    "eval": ("hardware",),
    "sweep": ("hpo",),
    "compress": ("compression", "model", "hardware"),
    "demos": ("data",),
    "compare": (),
}
ALL_GROUPS = tuple(dict.fromkeys(g for groups in COMMAND_GROUPS.values() for g in groups))
# Hydra's flags that print something and exit (no run, no pre-flight check), and its multirun flags.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--resolve", "-p",
              "--package"}
MULTIRUN_FLAGS = {"-m", "--multirun"}


def data_change_args(args: list[str]) -> list[str]:
    """`mmrl eval`'s command line with ``data.<key>=...`` written ``+data.<key>=...``: the eval config's
    ``data`` section starts empty, and Hydra adds a key there only with ``+``."""
    return [f"+{a}" if a.startswith("data.") else a for a in args]


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Keys that moved since earlier versions (mmrl 0.1 kept the loop settings in `algo`).
MOVED_KEYS = {
    "algo.total_steps": "total_steps",
    "algo.n_envs": "rollout.n_envs",
    "algo.n_steps": "rollout.n_steps",
    "algo.bootstrap_truncated": "rollout.bootstrap_truncated",
}


def moved_key(key: str) -> str | None:
    """Where an unknown `<group>.<name>` key lives now: the `MOVED_KEYS` table, or the top-level or
    `rollout` key of that name (the settings every algorithm shares)."""
    import dataclasses

    if key in MOVED_KEYS:
        return MOVED_KEYS[key]
    group, _, name = key.partition(".")
    if group not in GROUP_SCHEMAS or "." in name:
        return None
    defaults = TrainConfig()
    if name in {f.name for f in dataclasses.fields(defaults)}:
        return name
    if name in {f.name for f in dataclasses.fields(defaults.rollout)}:
        return f"rollout.{name}"
    return None


def compose_error(e: Exception) -> str:
    """One line out of a Hydra composition error."""
    text = str(e)
    missing = re.search(r"Could not find '([\w-]+)/([^']*)'", text)
    if missing and missing.group(1) in ALL_GROUPS:
        group, option = missing.groups()
        return f"{group}={option}: unknown option (expected one of: {', '.join(group_options(group))})"
    not_struct = re.search(r"Could not override '([\w.]+)'", text)
    if not_struct:
        key = not_struct.group(1)
        new_key = re.search(r"full_key: ([\w.]+)", f"{text} {e.__cause__}")
        if new_key and new_key.group(1).startswith(key + "."):
            # a dict value with keys the current dict lacks (e.g. data.env_kwargs={maxRoomSize: 5})
            return (f"{key}: a dict with new keys ({new_key.group(1)}) replaces the old one with "
                    f"++{key}={{...}}, or add one key with +{new_key.group(1)}=...")
        group = key.split(".")[0]
        hint = f" (see `mmrl train --cfg job` for the keys of this {group})" if group in GROUP_SCHEMAS else ""
        if moved_key(key):
            hint = f" (did you mean {moved_key(key)}=...?)"
        return f"{key}: unknown key{hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(e).__name__


# Hydra's own output settings: each would make Hydra write outside the run directory (mmrl writes
# only there), so they are refused with what to set instead. hydra.searchpath, hydra/launcher
# and hydra.launcher.* (and the multirun directory under runs_root) stay as they are.
HYDRA_OUTPUT_KEYS = {
    "hydra.run": "mmrl makes the run directory itself (<runs_root>/<date>/<time>[-<run_name>]): set runs_root or run_name",
    "hydra.sweep": "a multirun (-m) writes under <runs_root>/multirun/: set runs_root",
    "hydra.output_subdir": "mmrl saves the composed config as <run>/config.yaml and writes no Hydra output files",
    "hydra.job.chdir": "mmrl stays in the launch directory (paths in the config are relative to it)",
    "hydra/job_logging": "mmrl logs to the terminal only (a Hydra log file would be written outside the run directory)",
    "hydra.job_logging": "mmrl logs to the terminal only (a Hydra log file would be written outside the run directory)",
    "hydra/hydra_logging": "mmrl logs to the terminal only (a Hydra log file would be written outside the run directory)",
    "hydra.hydra_logging": "mmrl logs to the terminal only (a Hydra log file would be written outside the run directory)",
}


def check_hydra_key(key: str) -> None:
    """ConfigError if `key` is one of Hydra's output settings (`HYDRA_OUTPUT_KEYS`)."""
    for prefix, why in HYDRA_OUTPUT_KEYS.items():
        if key == prefix or key.startswith(prefix + "."):
            raise ConfigError(f"{key}: cannot be overridden: {why}")


def check_hydra_flags(command: str, args: list[str]) -> None:
    """ConfigError (one line) if Hydra's own flags are malformed (`--cfg nonsense`, `-p` without
    a value), instead of argparse's usage message; flags that print and exit are left to Hydra."""
    from hydra._internal.utils import get_args_parser

    if {"--help", "-h", "--hydra-help", "--version"}.intersection(args):
        return
    parser = get_args_parser()

    def error(message: str) -> None:
        raise ConfigError(f"{message.removeprefix('argument ')} (see `mmrl {command} --help`)")

    parser.error = error
    parser.parse_known_args(args)  # unknown flags: main names them


def check_overrides(command: str, overrides: list[str], check) -> None:
    """Compose `mmrl <command>`'s config for every value of any sweep (-m) and run `check(cfg,
    overrides)` on each; raise ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(f"malformed override: {str(e).splitlines()[0]}") from None
    variants: list[list[str]] = [[]]
    fixed = []
    for override, text in zip(parsed, overrides):
        if not override.key_or_group:
            raise ConfigError(f"malformed override {text!r}: expected key=value")
        check_hydra_key(override.key_or_group)
        if override.is_sweep_override():
            key = override.get_key_element()
            values = list(override.sweep_string_iterator())
            variants = [v + [f"{key}={value}"] for v in variants[:1] for value in values] + variants[1:]
        else:
            fixed.append(text)
    # A resumed run takes its config from its checkpoint: compose only what finds the run here,
    # and apply the other overrides to the saved config (check_train).
    finding_run = [text for o, text in zip(parsed, overrides) if o.key_or_group in ("resume", "runs_root")]
    resuming = command == "train" and any(o.key_or_group == "resume" for o in parsed)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=command):
        for extra in variants:
            try:
                cfg = compose(config_name=command, overrides=finding_run if resuming else fixed + extra)
            except Exception as e:
                raise ConfigError(compose_error(e)) from None
            check(cfg, fixed + extra)


def compose_command_config(command: str, overrides: list[str] | tuple[str, ...] = ()):
    """The raw config of `mmrl <command>` with command-line style `overrides`, composed by Hydra's
    compose API only (no Hydra app, no output directory); raises ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def composed():
        try:
            return compose(command, overrides=list(overrides))
        except Exception as e:  # Hydra's and OmegaConf's errors: one line naming the key or option
            raise ConfigError(compose_error(e)) from None

    if GlobalHydra.instance().is_initialized():  # inside an mmrl command: its search path holds conf/
        return composed()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return composed()


def compose_train_config(overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """`mmrl train`'s config with command-line style `overrides` (``["algo=a2c", "seed=2"]``), validated;
    raises ConfigError."""
    return validate(compose_command_config("train", overrides))
