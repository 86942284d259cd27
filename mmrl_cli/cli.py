"""The `mmrl` entrypoint: pick a subcommand, check the config, hand over to its Hydra app.

Each subcommand is a Hydra app composed from `conf/<command>.yaml`, so Hydra's own flags work
(`--cfg job`, `-m` multirun, `--shell-completion`). Before Hydra runs anything, the overrides
are composed and validated here, so a bad one costs one clear line and exit code 2, never a
traceback or a half-made run directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import dataclass
import re
import signal
import sys
import threading
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import GROUP_SCHEMAS, ConfigError, TrainConfig, validate, validate_eval
from .demos.command import check_demos, demos_task
from .distributions import ActionSpace
from .models.patches import default_patch_size

CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("algo", "model", "data", "hardware", "compression", "exp")  # groups of `mmrl train`
SWEEP_GROUPS = ("hpo",)  # groups of `mmrl sweep` (the study: space, objective, sampler, pruner, budget)
# Flags that ask Hydra for information rather than a run: no validation needed before them.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--resolve", "-p", "--package"}
MULTIRUN_FLAGS = {"-m", "--multirun"}
RUN_DIR_VARIABLE = "MMRL_RUN_DIR"  # the run directory the torchrun launcher hands every rank (= runs.RUN_DIR_VARIABLE)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def fail(command: str, message: str) -> None:
    """Print one error line and exit with status 2."""
    print(f"mmrl {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# ------------------------------------------------------------------------ validation
def check_compatible(cfg: TrainConfig, resuming: bool = False, evaluating: bool = False,
                     inference_batches: dict[str, int] | None = None) -> None:
    """Checks that need more than the schema: numbers by kind, devices, gymnasium ids, model vs
    observations, memory (also of `inference_batches`: key -> observations at once), the teacher
    run (not to evaluate) and the init_from run (only for a fresh start). Builds nothing big: the
    env's observations are described, the model is built on torch's meta device."""
    import torch

    from .compress.teacher import source_run

    from .preflight import check_inference_memory, check_memory, check_name, check_numbers

    check_numbers(cfg)
    if cfg.hardware.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device: {cfg.hardware.device} requested but no CUDA device is available (use hardware=cpu)")
    on_cpu = cfg.hardware.device == "cpu" or (cfg.hardware.device == "auto" and not torch.cuda.is_available())
    if cfg.hardware.distributed and cfg.hardware.backend == "nccl" and on_cpu:
        raise ConfigError("hardware.backend: nccl needs CUDA devices, but the ranks would run on the CPU "
                          f"(hardware.device={cfg.hardware.device}{', no CUDA device is available' if cfg.hardware.device == 'auto' else ''}); "
                          "use hardware.backend=gloo or auto")
    check_name("run_name", cfg.run_name)
    spec, action_space = observation_spec_of(cfg.data)
    if cfg.model.type in ("vit-gpt2", "cnn") and not spec.keys() & {"image", "grid"}:
        raise ConfigError(f"model: model={cfg.model.type} needs image observations, but data gives {sorted(spec)} (try model=mlp)")
    patch = cfg.data.tile_size if cfg.data.type == "goto" else 1
    if cfg.model.type == "vit-gpt2" and cfg.data.type == "gym" and "image" in spec:
        height, width = spec["image"][0][:2]
        patch = default_patch_size(height, width)
        if height % patch or width % patch:
            raise ConfigError(f"model: a {height}x{width} image is not a whole number of {patch}-pixel ViT patches (try model=cnn)")

    from .models import build_policy

    def measure_model() -> tuple[int, int]:
        from .preflight import activation_elements_per_sample

        try:
            with torch.device("meta"):
                policy = build_policy(cfg.model, spec, action_space, patch)
        except ValueError as e:
            raise ConfigError(str(e) if str(e).startswith("model") else f"model: {e}") from None
        return sum(p.numel() for p in policy.parameters()), activation_elements_per_sample(policy, spec)

    check_memory(cfg, spec, measure_model)
    if inference_batches:
        check_inference_memory(cfg, spec, measure_model, inference_batches)
    if cfg.teacher is not None and not evaluating:
        source_run(cfg, "teacher")
    if cfg.init_from is not None and not resuming and not evaluating:
        check_init_from_fits(source_run(cfg, "init_from"), lambda: build_policy(cfg.model, spec, action_space, patch))


def check_init_from_fits(run, build) -> None:
    """ConfigError unless the weights of the `init_from` run fit the policy this run builds
    (`build()`, here on torch's meta device): the same model config on another env may still
    differ in its input or output layers."""
    import torch

    from .checkpoint import CheckpointError, check_model_fits
    from .compress.structure import adopt_saved_structure

    weights = run.checkpoint_dir / "model.safetensors"
    try:
        with torch.device("meta"):
            policy = build()
            adopt_saved_structure(policy, weights)
        check_model_fits(weights, policy)
    except CheckpointError as e:
        raise ConfigError(f"init_from: {e}; its env must give the same observations and actions as this run's") from None


def observation_spec_of(data_cfg) -> tuple[dict, ActionSpace]:
    """The observation spec and action space of the env `data_cfg` names, without building it."""
    import torch

    if data_cfg.type == "goto":
        from .envs.goto import ACTION_NAMES, MISSION_TOKENS

        side = data_cfg.grid_size * data_cfg.tile_size
        spec = {"image": ((side, side, 3), torch.uint8), "mission": ((MISSION_TOKENS,), torch.int64)}
        return spec, ActionSpace.discrete(len(ACTION_NAMES))
    if data_cfg.type == "cartpole":
        return {"vector": ((4,), torch.float32)}, ActionSpace.discrete(2)
    return gym_observations(data_cfg)


def gym_observations(data_cfg) -> tuple[dict, ActionSpace]:
    """Observation spec mmrl would feed from a gymnasium env id, and its action space.

    Makes the env once to check the id, its kwargs, and that its spaces are ones mmrl handles.
    """
    import gymnasium as gym

    from .envs.gym_adapter import (GymObservations, UnsupportedEnvError, action_space_of, describe_observations,
                                   import_env_packages, make_quiet)

    import_env_packages()
    if data_cfg.env_id not in gym.registry:
        raise ConfigError(f"data.env_id: {data_cfg.env_id!r} is not a registered gymnasium env id")
    try:
        env = make_quiet(data_cfg.env_id, **dict(data_cfg.env_kwargs))
    except Exception as e:  # a bad kwarg, a missing dependency, ...
        raise ConfigError(f"data.env_kwargs: gymnasium could not make {data_cfg.env_id}: {str(e).splitlines()[0]}") from None
    try:
        try:
            actions = action_space_of(env.action_space, data_cfg.env_id, data_cfg.action_squash)
            layout = describe_observations(env, data_cfg.image, data_cfg.constant_mission)
        except UnsupportedEnvError as e:
            raise ConfigError(f"data.env_id: {str(e) if str(e).startswith(data_cfg.env_id) else f'{data_cfg.env_id}: {e}'}") from None
    finally:
        env.close()
    return GymObservations(layout, data_cfg.mission_tokens, "cpu").spec, actions


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
    if missing and missing.group(1) in GROUPS + SWEEP_GROUPS:
        group, option = missing.groups()
        return f"{group}={option}: unknown option (expected one of: {', '.join(group_options(group))})"
    not_struct = re.search(r"Could not override '([\w.]+)'", text)
    if not_struct:
        key = not_struct.group(1)
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


def check_overrides(command: str, overrides: list[str]) -> None:
    """Compose and validate the config for every value of any sweep; raise ConfigError."""
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
            COMMANDS[command].check(cfg, fixed + extra)


def check_train(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl train` needs settled before it starts (resumed runs: the saved run too)."""
    from .preflight import check_output_dir

    typed = validate(cfg)
    resuming = typed.resume is not None
    if resuming:
        run = resumed_run(typed.resume, typed.runs_root, overrides)
        typed = run.typed
        check_output_dir("resume", run.run_dir, probe=False)
    else:
        check_output_dir("runs_root", typed.runs_root)
    check_compatible(typed, resuming=resuming)
    check_rendezvous(typed.hardware)


RENDEZVOUS_TIMEOUT_S = 5  # how long a node > 0 waits for node 0's rendezvous before saying it is not there


def check_rendezvous(hardware) -> None:
    """On node > 0 of several: node 0's c10d rendezvous (`hardware.rdzv_endpoint`, a torch
    TCPStore that node 0's torchrun hosts) answers within a few seconds; otherwise torchrun would
    wait for it, silently, for many minutes. Start node 0 first. Ranks do not ask again."""
    if hardware.nnodes == 1 or hardware.node_rank == 0 or RUN_DIR_VARIABLE in os.environ or "LOCAL_RANK" in os.environ:
        return
    import datetime

    from torch.distributed import TCPStore

    host, _, port = hardware.rdzv_endpoint.rpartition(":")
    with c_stderr_silenced():  # the store's C++ client logs every retry to stderr
        try:
            TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
            return
        except Exception as e:  # DistNetworkError, DistStoreError, ...: the reason is in the first line
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"hardware.rdzv_endpoint: no rendezvous answers at {hardware.rdzv_endpoint} within "
                      f"{RENDEZVOUS_TIMEOUT_S} s ({reason}); start node 0 (hardware.node_rank=0) first, or check the address")


@contextlib.contextmanager
def c_stderr_silenced():
    """Send file descriptor 2 (what C/C++ code writes to stderr) to /dev/null inside the block."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def resumed_run(resume: str, runs_root: str, overrides: list[str]):
    """The run and checkpoint `resume=` names, with its saved config plus the other overrides."""
    from .runs import load_run_checkpoint

    return load_run_checkpoint(resume, runs_root, "latest", "resume", overrides, ignore=("resume", "runs_root"))


def check_eval(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl eval` needs settled: a valid eval config, a run, an intact checkpoint, a
    writable <run>/eval."""
    from .preflight import check_output_dir

    run = evaluated_run(validate_eval(cfg))
    check_output_dir("run", run.run_dir / "eval", probe=False)


def evaluated_run(typed):
    """The run and checkpoint `mmrl eval` evaluates, checked against what this evaluation asks for:
    numbers by kind, paths the filesystem takes, and memory (the envs and forward pass of
    `episodes`, their results, the GIF's frames)."""
    from .evaluation import eval_envs
    from .preflight import check_episode_results, check_gif_memory, check_numbers, check_path
    from .runs import load_run_checkpoint

    check_numbers(typed)
    check_path("run", typed.run)
    check_path("runs_root", typed.runs_root)
    check_episode_results("episodes", typed.episodes)
    run = load_run_checkpoint(typed.run, typed.runs_root, typed.checkpoint, "run")
    run.typed.hardware = typed.hardware  # evaluated on this command's hardware, not the training run's
    check_compatible(run.typed, evaluating=True, inference_batches={"episodes": eval_envs(run.typed.data, typed.episodes)})
    if typed.gif.episodes:
        check_gif_memory(run.typed, typed.gif, observation_spec_of(run.typed.data)[0])
    return run


def check_sweep(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl sweep` needs settled: a valid study config, a usable storage (URL, driver,
    SQLite file or reachable server), a base `mmrl train` config and a valid, runnable config at
    every bound and choice of the search space, memory for the workers, a writable sweep
    directory, and (when resuming) the same study as before. No message shows a storage password."""
    from .preflight import check_output_dir
    from .sweep.run import check_resumable, check_workers_fit
    from .sweep.settings import short_path, validate_sweep
    from .sweep.study import check_storage, mask_secrets

    typed = None
    try:
        typed = validate_sweep(cfg)
        check_storage(typed.hpo, Path(typed.directory))  # first: quick, and names the storage problem
        if typed.hpo.html:
            try:
                import plotly  # noqa: F401
            except ImportError:
                raise ConfigError("hpo.html: interactive plots need plotly (pip install plotly), or set hpo.html=false") from None
        if f"{typed.hpo.study_name}-best" in group_options("exp"):
            raise ConfigError(f"hpo.study_name: {typed.hpo.study_name}-best would shadow the shipped exp preset of that name")
        check_trial_configs(typed)
        check_workers_fit(typed)
        key = "sweep_dir" if typed.sweep_dir else "runs_root"
        try:
            check_output_dir(key, typed.directory)
        except OSError as e:  # what the filesystem refuses beyond the length checks (e.g. ENAMETOOLONG)
            raise ConfigError(f"{key}: {short_path(typed.directory)} cannot be used ({e.strerror})") from None
        check_resumable(typed)
    except ConfigError as e:  # whatever a check quotes, a password stays masked
        raise ConfigError(mask_secrets(str(e), typed.hpo.storage if typed else None)) from None


def check_trial_configs(config) -> None:
    """The base trial config, and the config at each bound or choice of each searched key, are valid."""
    from .config import compose_train_config
    from .sweep.settings import parse_space

    base = list(config.hpo.train)
    try:
        check_compatible(compose_train_config(base))
    except ConfigError as e:
        raise ConfigError(f"hpo.train: {e}") from None
    for param in parse_space(config.hpo.space):
        for value in param.extremes():
            try:
                check_compatible(compose_train_config(base + [param.override(value)]))
            except ConfigError as e:
                raise ConfigError(f"hpo.space.{param.key}: the value {value!r} gives an invalid run: {e}") from None


def check_compress(cfg: DictConfig, overrides: list[str]) -> None:
    """Everything `mmrl compress` needs settled: a valid config (run_name a plain name), paths the
    filesystem takes, an intact teacher run, a valid student run config (low-rank: something to
    factorise), memory for the report, a writable output directory."""
    from .compress.run import output_dir, student_config
    from .compress.settings import validate_compress
    from .compress.teacher import trained_run
    from .evaluation import eval_envs
    from .preflight import check_episode_results, check_numbers, check_output_dir, check_path

    typed = validate_compress(cfg)
    check_numbers(typed)
    for key in ("teacher", "runs_root", "out_dir"):
        check_path(key, getattr(typed, key))
    teacher = trained_run(typed.teacher, typed.runs_root, "teacher")
    check_compatible(student_config(typed, teacher.typed, teacher.run_dir))
    report = typed.report  # the report evaluates and times every model on these batches
    check_compatible(teacher.typed, evaluating=True,
                     inference_batches={"report.episodes": eval_envs(teacher.typed.data, report.episodes),
                                        "report.latency_batch": report.latency_batch})
    check_episode_results("report.episodes", report.episodes)
    check_output_dir("out_dir" if typed.out_dir else "runs_root", output_dir(typed, teacher.run_dir))


# ---------------------------------------------------------------------------- train
def make_run_dir(cfg: TrainConfig) -> Path:
    """A new, unique run directory: <runs_root>/<date>/<time>[-<run_name>] (or Hydra's job dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        run_dir = Path(hydra_cfg.runtime.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    return new_run_dir(cfg)


def new_run_dir(cfg: TrainConfig) -> Path:
    """Create <runs_root>/<date>/<time>[-<run_name>] (with .1, .2, ... if taken)."""
    now = dt.datetime.now()
    base = Path(cfg.runs_root) / now.strftime("%Y-%m-%d") / (now.strftime("%H-%M-%S") + (f"-{cfg.run_name}" if cfg.run_name else ""))
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = base if n == 0 else base.with_name(f"{base.name}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory next to {base}")


def rate_with_interval(value: float | None, interval: list[float] | None) -> str:
    """"0.950  (95% CI 0.930 to 0.965)", or why there is no figure."""
    if value is None:
        return "not defined for this env (see the return)"
    low, high = interval
    return f"{value:.3f}  (95% CI {low:.3f} to {high:.3f})"


def print_summary(summary: dict) -> None:
    """The end-of-run table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mmrl train: summary", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # long paths wrap instead of being cut
    table.add_row("held-out success rate", rate_with_interval(summary["heldout_success_rate"], summary["heldout_success_ci95"]))
    table.add_row("held-out return", rate_with_interval(summary["heldout_return"], summary["heldout_return_ci95"]))
    if summary["validation_success_rate"] is None:
        table.add_row("validation return", f"{summary['validation_return']:.3f}  (last periodic evaluation)")
    else:
        table.add_row("validation success rate", f"{summary['validation_success_rate']:.3f}  (last periodic evaluation)")
    table.add_row("env steps", f"{summary['steps']:,}")
    table.add_row("wall time", f"{summary['wall_seconds']:.1f} s ({summary['steps_per_second']:,.0f} steps/s)")
    if summary["skipped_steps"]:
        table.add_row("skipped gradient steps", f"{summary['skipped_steps']} (non-finite loss or gradient)")
    table.add_row("device", summary["device"])
    table.add_row("saved to", summary["run_dir"])
    Console().print(table)


def train_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl train`: validate, make (or reopen) the run directory, train, summarise."""
    from hydra.core.hydra_config import HydraConfig

    from .checkpoint import CheckpointError
    from .runs import RunLocked
    from .trainer import NumericalFault, train

    from .preflight import check_output_dir

    resume_from = None
    launched_dir = os.environ.get(RUN_DIR_VARIABLE)  # set when this process is one rank of `hardware.nproc`
    try:
        if cfg.get("resume") is not None:  # the config comes from the run's checkpoint
            run = resumed_run(str(cfg.resume), str(cfg.runs_root), list(HydraConfig.get().overrides.task))
            typed, run_dir, resume_from = run.typed, run.run_dir, run.checkpoint_dir
            for note in run.notes:
                print(f"mmrl train: warning: {note}", file=sys.stderr)
            check_output_dir("resume", run_dir, probe=False)
        else:
            typed = validate(cfg)
            check_output_dir("runs_root", typed.runs_root)
        check_compatible(typed, resuming=resume_from is not None)
    except ConfigError as e:
        fail("train", str(e))
    if typed.hardware.distributed and launched_dir is None and "LOCAL_RANK" not in os.environ:
        # A job of a Hydra launcher (-m, submitit): start the ranks from here, in the job's directory.
        job_dir = run_dir if resume_from is not None else make_run_dir(typed)
        status = launch_distributed(typed, [o for o in HydraConfig.get().overrides.task], job_dir)
        if status:
            raise SystemExit(status)
        return json.loads((job_dir / "summary.json").read_text())["heldout_success_rate"]
    if launched_dir is not None:  # one rank: the launcher made the run directory; a restart resumes in it
        run_dir = Path(launched_dir)
        restarts = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if resume_from is None or restarts > 0:
            resume_from = latest_checkpoint(run_dir) or resume_from
        if restarts and os.environ.get("RANK", "0") == "0":  # the trainer says which checkpoint it resumes from
            print(f"mmrl train: elastic restart {restarts} of hardware.max_restarts={typed.hardware.max_restarts}",
                  file=sys.stderr)
    elif resume_from is None:
        try:
            run_dir = make_run_dir(typed)
        except OSError as e:
            fail("train", f"runs_root: could not create a run directory under {typed.runs_root} ({e.strerror})")
    # Nothing is written into a resumed run before the trainer has loaded its checkpoint and
    # locked it: a refused checkpoint or a run in use leaves it as it was.
    main_rank = os.environ.get("RANK", "0") == "0"
    hint = f"resume with: mmrl train resume={run_dir}"
    try:
        summary = train(typed, run_dir, resume_from=resume_from)
    except KeyboardInterrupt:
        print(f"\nmmrl train: stopped at once; the last periodic checkpoint is in {run_dir}/checkpoints ({hint})", file=sys.stderr)
        raise SystemExit(interrupted_status()) from None
    except NumericalFault as e:
        kept = f"the last good checkpoint is kept in {run_dir}/checkpoints" if (run_dir / "checkpoints").is_dir() \
            else "no checkpoint had been written yet"
        print(f"mmrl train: error: {e}; {kept}", file=sys.stderr)
        raise SystemExit(1) from None
    except (CheckpointError, RunLocked) as e:
        fail("train", f"resume: {e}")
    except OSError as e:  # a full disk, a directory made read-only: a fault, not bad input (exit 1)
        print(f"mmrl train: error: {io_failure(e)}; {kept_checkpoint(run_dir)} ({hint})", file=sys.stderr)
        raise SystemExit(1) from None
    if summary["stopped_by"]:
        if main_rank:
            print(f"mmrl train: stopped by {summary['stopped_by']} after {summary['steps']:,} steps; checkpoint saved; {hint}",
                  file=sys.stderr)
        raise SystemExit(143 if summary["stopped_by"] == "SIGTERM" else 130)
    if main_rank:
        print_summary(summary)
    return summary["heldout_success_rate"]


def io_failure(error: OSError) -> str:
    """What an OSError says, in one line: the errno text and the path it concerns."""
    what = error.strerror or str(error).splitlines()[0] or type(error).__name__
    return f"{what}: {error.filename}" if error.filename else what


def kept_checkpoint(run_dir: Path) -> str:
    """Where the newest intact checkpoint of `run_dir` is (the run continues from it), in words."""
    latest = latest_checkpoint(run_dir)
    return f"the last checkpoint, {latest.name}, is intact in {run_dir}/checkpoints" if latest \
        else "no checkpoint had been written yet"


def eval_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl eval`: evaluate a run's checkpoint, write eval/results.json and a GIF."""
    from .evaluation import run_eval

    try:
        typed = validate_eval(cfg)
        run = evaluated_run(typed)
    except ConfigError as e:
        fail("eval", str(e))
    for note in run.notes:
        print(f"mmrl eval: warning: {note}", file=sys.stderr)
    results = run_eval(typed, run.run_dir, run.checkpoint_dir, run.typed)
    print_eval(results)
    return results["success_rate"]


def sweep_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl sweep`: validate, run (or resume) the study, retrain the best, report."""
    from .sweep import run_sweep, validate_sweep

    try:
        typed = validate_sweep(cfg)
        check_sweep(cfg, [])
    except ConfigError as e:
        fail("sweep", str(e))
    try:
        results = run_sweep(typed)
    except SystemExit as e:  # the sweep's own stop (its workers stopped) says 130 for any signal
        raise SystemExit(interrupted_status() if e.code == 130 else e.code) from None
    print_sweep(results)
    best = results["best"]
    return best["validation_mean"] if best else float("nan")


def compress_task(cfg: DictConfig) -> float:
    """Hydra task of `mmrl compress`: train the compressed student, report it beside the teacher."""
    import shlex

    from .compress.run import CompressStopped, run_compress
    from .compress.settings import validate_compress

    try:
        typed = validate_compress(cfg)
        check_compress(cfg, [])
    except ConfigError as e:
        fail("compress", str(e))
    try:
        report = run_compress(typed)
    except CompressStopped as e:
        # run_hydra put this command's arguments in sys.argv: the same command continues the stopped run
        command = shlex.join(["mmrl", "compress", *sys.argv[1:]])
        print(f"mmrl compress: {e}; resume with: {command}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    print_compress(report)
    return report["rows"][-1]["success_rate"] or float("nan")


def print_compress(report: dict) -> None:
    """The trade-off table of `mmrl compress`."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl compress: teacher {report['teacher']}")
    for column in ("method", "seed", "params", "non-zero", "file KB", "MACs/step", "latency ms", "speed-up", "held-out success", "kept"):
        table.add_column(column, overflow="fold")
    for r in report["rows"]:
        success = "n/a" if r["success_rate"] is None else f"{r['success_rate']:.3f} ({r['success_ci95'][0]:.2f}-{r['success_ci95'][1]:.2f})"
        table.add_row(r["method"], str(r["seed"]), f"{r['parameters']:,}", f"{r['nonzero_parameters']:,}",
                      f"{r['file_bytes'] / 1024:.0f}", f"{r['macs_per_step'] / 1e6:.2f}M", f"{r['latency_ms']:.2f}",
                      f"{r['speedup']:.2f}x", success, f"{100 * r['success_kept']:.1f}%" if "success_kept" in r else "n/a")
    Console().print(table)
    print(f"report: {report['report_md']} (plot: {report['report_png']})")


def print_sweep(results: dict) -> None:
    """The table `mmrl sweep` ends with."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl sweep: {results['study_name']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("trials", ", ".join(f"{n} {state}" for state, n in results["counts"].items()))
    table.add_row("env steps spent", f"{results['steps_spent']:,}")
    if results["best_trial"]:
        best = results["best_trial"]
        table.add_row("best trial (validation)", f"{best['number']}: {', '.join(f'{v:.4g}' for v in best['values'])}")
    for r in results["retrained"]:
        success = (f"held-out success {r['heldout_success_mean']:.3f} (95% CI over seeds "
                   f"{r['heldout_success_ci95_over_seeds'][0]:.3f} to {r['heldout_success_ci95_over_seeds'][1]:.3f}), "
                   if "heldout_success_mean" in r else "")
        table.add_row(f"retrained #{r['rank_in_sweep']} (trial {r['trial']})",
                      f"{success}held-out return {r['heldout_return_mean']:.3f}, validation {r['validation_mean']:.3f}, "
                      f"{r['seeds']} fresh seeds")
    if results["preset"]:
        table.add_row("best config", f"mmrl train exp={results['preset_name']}  ({results['preset']})")
    table.add_row("report", str(Path(results["sweep_dir"]) / "report.md"))
    Console().print(table)


def print_eval(results: dict) -> None:
    """The table `mmrl eval` prints."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mmrl eval: {results['split']} levels, checkpoint {results['checkpoint']}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")
    table.add_row("success rate", rate_with_interval(results["success_rate"], results["success_ci95"]))
    table.add_row("return", rate_with_interval(results["return_mean"], results["return_ci95"]))
    table.add_row("episodes", f"{results['episodes']} ({'argmax' if results['deterministic'] else 'sampled'} actions)")
    table.add_row("mean episode length", f"{results['length_mean']:.1f}")
    table.add_row("results", str(Path(results["run"]) / "eval" / "results.json"))
    if "gif" in results:
        table.add_row("episodes GIF", results["gif"])
    if "gif_unavailable" in results:
        table.add_row("episodes GIF", f"none: {results['gif_unavailable']}")
    Console().print(table)


@dataclass
class Command:
    """A subcommand: its Hydra task, the pre-flight check of its config, its help line."""

    task: object
    check: object
    help: str


COMMANDS = {
    "train": Command(train_task, check_train, "train a policy with RL (PPO by default); resume=<run dir> continues one"),
    "eval": Command(eval_task, check_eval, "evaluate a run's checkpoint: success rate, return (95% CIs), GIF of episodes"),
    "sweep": Command(sweep_task, check_sweep, "Optuna hyperparameter search over train runs (hpo=<preset>); re-run to resume"),
    "compress": Command(compress_task, check_compress, "distill, prune or factorise a trained run (teacher=<run>); trade-off report"),
    "demos": Command(demos_task, check_demos, "record expert demonstrations (goto planner, BabyAI bot) as a resumable dataset"),
}


# ------------------------------------------------------------------- several processes
def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of `run_dir`, or None when it has none."""
    from .checkpoint import CheckpointError, find_checkpoint

    try:
        return find_checkpoint(run_dir)[0]
    except CheckpointError:
        return None


def torchrun_command(hardware, args: list[str]) -> list[str]:
    """The `torch.distributed.run` command line that starts `mmrl train <args>` on every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={hardware.nproc}",
               f"--max-restarts={hardware.max_restarts}"]
    if hardware.nnodes == 1:
        command.append("--standalone")  # one machine: a local rendezvous on a free port
    else:
        command += [f"--nnodes={hardware.nnodes}", f"--node-rank={hardware.node_rank}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={hardware.rdzv_endpoint}", "--rdzv-id=mmrl"]
    return command + ["-m", "mmrl_cli.cli", "train", *args]


FAILURE_FIELDS = re.compile(r"^\s*(rank|exitcode)\s*:\s*(.+?)\s*$")


def failure_cause(lines: list[str]) -> str:
    """Which rank failed and how, from torchrun's failure report (its root cause when it names one)."""
    root = max((i for i, line in enumerate(lines) if "Root Cause" in line), default=None)
    if root is not None:
        lines = lines[root:]
    fields = {}
    for line in lines:
        match = FAILURE_FIELDS.match(line)
        if match and match.group(1) not in fields:
            fields[match.group(1)] = match.group(2).split()[0]
    code = fields.get("exitcode")
    how = f"killed by signal {-int(code)}" if code and code.lstrip("-").isdigit() and int(code) < 0 else f"exit code {code}"
    return f"rank {fields.get('rank', '?')} failed ({how})" if fields else "a rank failed"


def launch_distributed(typed: TrainConfig, args: list[str], run_dir: Path | None = None) -> int:
    """Run `mmrl train <args>` on `hardware.nproc` ranks under torchrun, in `run_dir` (default: a
    new run directory, or the resumed run's); return the exit status."""
    import subprocess

    from .runs import RunLock, RunLocked

    hardware = typed.hardware
    if run_dir is not None:
        pass
    elif typed.resume is not None:
        run_dir = resumed_run(typed.resume, typed.runs_root, args).run_dir
    else:
        try:
            run_dir = new_run_dir(typed)
        except OSError as e:
            fail("train", f"runs_root: could not create a run directory under {typed.runs_root} ({e.strerror})")
    try:  # the launcher holds the run's lock for its ranks (and their elastic restarts)
        lock = RunLock(run_dir).acquire()
    except RunLocked as e:
        fail("train", f"resume: {e}")
    env = {**os.environ, RUN_DIR_VARIABLE: str(run_dir), "OMP_NUM_THREADS": str(hardware.threads or 1)}
    process = subprocess.Popen(torchrun_command(hardware, args), env=env, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    try:
        for line in process.stderr:  # rank output passes through; torchrun's failure report is kept
            sys.stderr.write(line)
            tail = (tail + [line])[-400:]
        status = process.wait()
    except KeyboardInterrupt:  # torchrun got a Ctrl-C too (the terminal's process group); a SIGTERM is passed on
        if STOP_SIGNAL["signum"] == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)
        status = process.wait()
    finally:
        lock.release()
    if status not in (0, 130, 143):
        kept = "the last checkpoint is in" if latest_checkpoint(run_dir) else "no checkpoint was written in"
        print(f"mmrl train: error: {failure_cause(tail)} and hardware.max_restarts={hardware.max_restarts} restarts "
              f"are used up; {kept} {run_dir}/checkpoints (resume with: mmrl train resume={run_dir})", file=sys.stderr)
        return 1
    return status


def distributed_launch_config(args: list[str]) -> TrainConfig | None:
    """The typed config of `mmrl train <args>` when it asks for several processes and this process
    is not already one of them; None otherwise."""
    if RUN_DIR_VARIABLE in os.environ or "LOCAL_RANK" in os.environ or INFO_FLAGS.intersection(args) \
            or MULTIRUN_FLAGS.intersection(args):
        return None
    from .config import compose_train_config

    overrides = list(args)
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), None)
    if resume is not None:
        runs_root = next((a.split("=", 1)[1] for a in overrides if a.startswith("runs_root=")), "runs")
        typed = resumed_run(resume, runs_root, overrides).typed
        typed.resume = resume
    else:
        typed = compose_train_config(overrides)
    return typed if typed.hardware.distributed else None


# ------------------------------------------------------------------------------ main
def print_help() -> None:
    """`mmrl --help`: the subcommands and every config group with its options."""
    lines = ["usage: mmrl <command> [hydra overrides] [hydra flags]", "", "commands:"]
    lines += [f"  {name:<10} {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "config groups (pick one with group=option, e.g. model=cnn):"]
    lines += [f"  {group:<12} {', '.join(group_options(group))}" for group in GROUPS]
    lines += [f"  {group:<12} {', '.join(group_options(group))}   (mmrl sweep)" for group in SWEEP_GROUPS]
    lines += [
        "", "examples:",
        "  mmrl train                                   # ViT-GPT2 + PPO on the built-in goto task",
        "  mmrl train algo=a2c                          # A2C (RMSprop, 5-step rollouts) on the same task",
        "  mmrl train exp=cartpole-ppo seed=2           # a tuned preset: CartPole with rl-zoo3's PPO settings",
        "  mmrl train -m seed=1,2,3                     # Hydra multirun: one run per seed",
        "  mmrl train --cfg job                         # print the composed config",
        "  mmrl train resume=runs/2026-11-24/10-00-00   # continue a stopped run (resume=latest: the newest)",
        "  mmrl eval run=runs/2026-11-24/10-00-00       # success rate with 95% CIs + a GIF of episodes",
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


def run_hydra(command: str, args: list[str]) -> None:
    """Run the Hydra app of `command` with `args` as its command line."""
    task = COMMANDS[command].task
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
    if not INFO_FLAGS.intersection(args):
        overrides = [a for a in args if a not in MULTIRUN_FLAGS]
        bad_flag = next((a for a in overrides if a.startswith("-")), None)
        if bad_flag:
            fail(command, f"unknown flag {bad_flag!r} (see `mmrl {command} --help`)")
        try:
            check_overrides(command, overrides)
            launch = distributed_launch_config(args) if command == "train" else None
        except ConfigError as e:
            fail(command, str(e))
        if launch is not None:
            raise SystemExit(launch_distributed(launch, args))
    run_hydra(command, args)


# ----------------------------------------------------------------------------- signals
SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
STOP_SIGNAL: dict = {"signum": None}  # the signal `signals_interrupt` turned into KeyboardInterrupt, if any


@contextlib.contextmanager
def signals_interrupt():
    """While a command runs, SIGTERM interrupts it as Ctrl-C does (KeyboardInterrupt) instead of
    killing it outright, so one path stops a command on either (the sweep stops its workers, an
    evaluation writes nothing half-done); `interrupted_status()` is then 143 for SIGTERM, 130 for
    SIGINT. The trainer and `mmrl compress` put their own graceful handlers over this one while
    they run. (A signal during Python's start-up, before this, ends the process the default way.)"""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum, _frame):
        STOP_SIGNAL["signum"] = signum
        raise KeyboardInterrupt

    STOP_SIGNAL["signum"] = None
    previous = {signum: signal.signal(signum, interrupt) for signum in SIGNAL_NAMES
                if signal.getsignal(signum) is not signal.SIG_IGN}  # nohup's ignored signals stay ignored
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted_status() -> int:
    """128 + the number of the signal that interrupted the command (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (STOP_SIGNAL["signum"] or signal.SIGINT)


if __name__ == "__main__":
    main()
