"""The `mmrl` entrypoint: pick a subcommand, check the config, hand over to its Hydra app.

Each subcommand is a Hydra app composed from `conf/<command>.yaml`, so Hydra's own flags work
(`--cfg job`, `-m` multirun, `--shell-completion`). Before Hydra runs anything, the overrides
are composed and validated (`compose.check_overrides` with the command's `check_<command>`), so a
bad one costs one clear line and exit code 2, never a traceback or a half-made run directory.
This module only dispatches: the commands live in `mmrl_cli/commands/` (and `demos/command.py`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra

from .compose import (ALL_GROUPS, COMMAND_GROUPS, CONF_DIR, INFO_FLAGS, MULTIRUN_FLAGS, check_hydra_flags,
                      check_overrides, data_change_args, group_options)
from .config import ConfigError
from .exits import SIGNAL_NAMES, STOP_SIGNAL, fail, interrupted_status, signals_interrupt


def command_parts(command: str) -> tuple:
    """(Hydra task, pre-flight check of its config) of `command`, imported when the command runs: they
    load torch (~2 s), which `mmrl --help`, `mmrl <command> --help` and tab completion do without."""
    if command == "train":
        from .commands.train import check_train as check, train_task as task
    elif command == "eval":
        from .commands.eval import check_eval as check, eval_task as task
    elif command == "sweep":
        from .commands.sweep import check_sweep as check, sweep_task as task
    elif command == "compress":
        from .commands.compress import check_compress as check, compress_task as task
    elif command == "demos":
        from .demos.command import check_demos as check, demos_task as task
    elif command == "compare":
        from .compare.command import check_compare as check, compare_task as task
    else:
        raise KeyError(f"no such command: {command}")  # main() names unknown commands before this
    return task, check


@dataclass
class Command:
    """A subcommand: its name and help line; its Hydra task and the pre-flight check of its config
    (`command_parts`) are imported when first called, so an override Hydra cannot compose is also
    answered without loading torch."""

    name: str
    help: str

    def task(self, cfg):
        """Run the command on its composed config (its Hydra task)."""
        return command_parts(self.name)[0](cfg)

    def check(self, cfg, overrides: list[str]) -> None:
        """The pre-flight check of the command's composed config; raises ConfigError."""
        return command_parts(self.name)[1](cfg, overrides)


COMMANDS = {command.name: command for command in [
    Command("train", "train a policy with RL (PPO by default); resume=<run dir> continues one"),
    Command("eval", "evaluate a run's checkpoint: success rate, return (95% CIs), GIF of episodes"),
    Command("sweep", "Optuna hyperparameter search over train runs (hpo=<preset>); re-run to resume"),
    Command("compress", "distill, prune or factorise a trained run (teacher=<run>); trade-off report"),
    Command("demos", "record expert demonstrations (goto planner, BabyAI bot) as a resumable dataset"),
    Command("compare", "compare runs: curves with bootstrap bands, IQM and other rliable statistics, time to a target"),
]}


def print_help() -> None:
    """`mmrl --help`: the subcommands and every config group with its options."""
    lines = ["usage: mmrl <command> [hydra overrides] [hydra flags]", "", "commands:"]
    lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "config groups (pick one with group=option, e.g. model=cnn):"]
    for group in ALL_GROUPS:
        users = [name for name, groups in COMMAND_GROUPS.items() if group in groups]
        lines.append(f"  {group:<12} {', '.join(group_options(group))}   ({', '.join(users)})")
    lines += [
        "", "examples:",
        "  mmrl train                                   # ViT-GPT2 + PPO on the built-in goto task",
        "  mmrl train algo=a2c                          # A2C (RMSprop, 5-step rollouts) on the same task",
        "  mmrl train exp=cartpole-ppo seed=2           # a tuned preset: CartPole with rl-zoo3's PPO settings",
        "  mmrl train -m seed=1,2,3                     # Hydra multirun: one run per seed",
        "  mmrl train --cfg job                         # print the composed config",
        "  mmrl train resume=runs/2026-11-24/10-00-00   # continue a stopped run (resume=latest: the newest)",
        "  mmrl eval run=runs/2026-11-24/10-00-00       # success rate with 95% CIs + a GIF of episodes",
        "  mmrl compare runs='runs/2026-11-24/*'        # curves, IQM and intervals (rliable), time to 0.9, per algo.type",
        "  mmrl sweep hpo=cartpole-ppo hpo.n_workers=2  # TPE + median pruning, 2 workers; re-run to resume",
        "  mmrl train exp=cartpole-ppo-best             # the best config that sweep found (runs/sweeps/*/exp/)",
        "  mmrl compress teacher=runs/2026-11-24/10-00-00 compression=distill   # 13x smaller student + report",
        "  mmrl compress -m teacher=... compression=prune,lowrank            # several methods, one shared table",
        "  mmrl train compression=kickstart teacher=runs/2026-11-24/10-00-00    # RL with an annealed teacher term",
        "  mmrl demos episodes=2000                     # 2,000 shortest-path demonstrations -> runs/demos/goto-2000",
        "  mmrl train algo=bc algo.demos=runs/demos/goto-2000   # behaviour cloning from them (then init_from=<run> for RL)",
        "  eval \"$(mmrl -sc install=bash)\"              # tab completion in bash",
        "", "`mmrl <command> --help` shows that command's config and Hydra's flags.",
    ]
    print("\n".join(lines))


def shell_completion(argv: list[str]) -> None:
    """Answer Hydra's bash completion for `mmrl <command> ...` (and complete command names)."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if any(a.startswith("query=") for a in argv) and (len(words) < 2 or (len(words) == 2 and not line.endswith(" "))):
        partial = words[1] if len(words) == 2 else ""
        print(" ".join(name for name in COMMANDS if name.startswith(partial)))
        return
    command = words[1] if len(words) >= 2 and words[1] in COMMANDS else "train"
    if line:
        os.environ["COMP_LINE"] = " ".join(["mmrl"] + words[2:]) + (" " if line.endswith(" ") else "")
    run_hydra(command, ["--shell-completion", *argv])


def sweep_preset_dirs(runs_root: str) -> list[Path]:
    """Sweep directories under `runs_root` that hold an exported `exp` preset."""
    root = Path(runs_root) / "sweeps"
    try:
        return sorted({p.parent.parent.resolve() for p in root.glob("*/exp/*.yaml")}) if root.is_dir() else []
    except OSError:  # a runs_root the filesystem cannot take (too long, ...): the config check names it
        return []


def sweep_preset_searchpath(args: list[str]) -> list[str]:
    """The override that lets `mmrl train exp=<study>-best` find presets exported by `mmrl sweep`
    (the sweeps under the runs_root given on the command line, else ./runs); none if there are none."""
    if any(a.startswith("hydra.searchpath=") for a in args):
        return []
    runs_root = next((a.split("=", 1)[1] for a in args if a.startswith("runs_root=")), "runs")
    dirs = sweep_preset_dirs(runs_root)
    if not dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in dirs) + "]"]


def help_page(command: str) -> str:
    """`mmrl <command> --help`: Hydra's page, but with only the config groups this command takes
    (Hydra alone would list every group in conf/, e.g. exp under `mmrl demos`, which refuses it)."""
    groups = [f"{group}: {', '.join(group_options(group))}" for group in COMMAND_GROUPS[command]]
    return "\n".join([f"mmrl {command}: {COMMANDS[command].help}", "", "== Configuration groups ==",
                      "Compose your configuration from those groups (group=option)" if groups else "(this command has none)",
                      "", *groups, "", "== Config ==", "Override anything in the config (foo.bar=value)", "", "$CONFIG",
                      "", "Hydra's own flags: `mmrl " + command + " --hydra-help`."])


def run_hydra(command: str, args: list[str]) -> None:
    """Run the Hydra app of `command` with `args` as its command line."""
    task = COMMANDS[command].task  # imports the command's module only when Hydra calls it (help, --cfg never do)
    if {"--help", "-h"}.intersection(args):
        from omegaconf import OmegaConf

        OmegaConf.register_new_resolver("mmrl_help", help_page, replace=True)
        args = [*args, f"hydra.help.template=${{mmrl_help:{command}}}"]
    sys.argv = ["mmrl", *args]
    hydra.main(config_path=str(CONF_DIR), config_name=command, version_base="1.3")(task)()


def main(argv: list[str] | None = None) -> None:
    """Console-script entrypoint."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return
    if argv[0] in ("-sc", "--shell-completion"):
        shell_completion(argv[1:])
        return
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(command, f"unknown command (expected one of: {', '.join(COMMANDS)}); see `mmrl --help`")
    if command == "train":
        args += sweep_preset_searchpath(args)
    if command == "eval":
        args = data_change_args(args)
    try:
        check_hydra_flags(command, args)
    except ConfigError as e:
        fail(command, str(e))
    with signals_interrupt():
        try:
            run_command(command, args)
        except KeyboardInterrupt:  # a signal where the command has no graceful stop of its own
            print(f"\nmmrl {command}: stopped by {SIGNAL_NAMES.get(STOP_SIGNAL['signum'], 'SIGINT')}; nothing was "
                  f"half-written: run the same command again", file=sys.stderr)
            raise SystemExit(interrupted_status()) from None


def run_command(command: str, args: list[str]) -> None:
    """Check the overrides, then run `mmrl <command>` (under torchrun when it asks for ranks)."""
    if not INFO_FLAGS.intersection(args):  # a run, not help, --cfg or completion
        overrides = [a for a in args if a not in MULTIRUN_FLAGS]
        bad_flag = next((a for a in overrides if a.startswith("-")), None)
        if bad_flag:
            fail(command, f"unknown flag {bad_flag!r} (see `mmrl {command} --help`)")
        try:
            check_overrides(command, overrides, COMMANDS[command].check)
            if command == "train":  # torchrun's ranks when the config asks for several
                from .launcher import distributed_launch_config, launch_distributed  # loads torch: after the checks

                launch = distributed_launch_config(args)
                if launch is not None:
                    raise SystemExit(launch_distributed(launch, args))
        except ConfigError as e:
            fail(command, str(e))
    run_hydra(command, args)


if __name__ == "__main__":
    main()
