"""Find existing runs and their checkpoints, for `mmrl train resume=...` and `mmrl eval run=...`.

Everything a user points at is checked here before any work starts: the directory exists and
is an mmrl run, it holds an intact checkpoint, the checkpoint's config is valid, and the
checkpoint's weights fit the model that config builds. Problems become one-line ConfigErrors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import FORMAT, LATEST, CheckpointError, check_model_fits, find_checkpoint, verify
from .config import GROUP_SCHEMAS, ConfigError, TrainConfig, validate

CONF_DIR = Path(__file__).resolve().parent / "conf"


@dataclass
class RunCheckpoint:
    """A run directory, the checkpoint chosen in it, and the config to continue or evaluate with."""

    run_dir: Path
    checkpoint_dir: Path
    config: DictConfig
    typed: TrainConfig
    notes: list[str]


def newest_run(runs_root: Path) -> Path | None:
    """The run under `runs_root` whose latest checkpoint was written most recently."""
    pointers = list(runs_root.glob(f"**/checkpoints/{LATEST}")) if runs_root.is_dir() else []
    newest = max(pointers, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent.parent if newest else None


def resolve_run(value: str, runs_root: str, key: str) -> tuple[Path, str]:
    """The run directory `value` names and the checkpoint it implies (`latest` unless it is one).

    `value` is a run directory, a checkpoint directory inside one, or ``latest`` (the newest
    run under `runs_root`).
    """
    if value == LATEST:
        run = newest_run(Path(runs_root))
        if run is None:
            raise ConfigError(f"{key}=latest: no run with a checkpoint under {runs_root}/")
        return run.resolve(), LATEST
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"{key}: {value} does not exist")
    if not path.is_dir():
        raise ConfigError(f"{key}: {value} is not a directory (expected an mmrl run directory)")
    path = path.resolve()
    if path.parent.name == "checkpoints" and (path / "meta.json").exists():
        return path.parent.parent, path.name
    if not (path / "config.yaml").is_file() and not (path / "checkpoints").is_dir():
        raise ConfigError(f"{key}: {value} is not an mmrl run directory (no config.yaml or checkpoints/)")
    return path, LATEST


def apply_overrides(cfg: DictConfig, overrides: list[str], ignore: tuple[str, ...]) -> None:
    """Apply `key=value` command-line overrides to a saved config (no group switches)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise ConfigError(f"malformed override: {str(e).splitlines()[0]}") from None
    for override in parsed:
        key = override.key_or_group
        if key in ignore or key.startswith("hydra"):
            continue
        if key == "hardware":  # moving a run to other hardware is fine: swap the whole group
            option = CONF_DIR / "hardware" / f"{override.value()}.yaml"
            if not option.is_file():
                raise ConfigError(f"hardware={override.value()}: unknown option")
            cfg.hardware = OmegaConf.load(option)
            continue
        if key in GROUP_SCHEMAS or key == "exp":
            raise ConfigError(f"{key}: a resumed run keeps its config groups; override single keys ({key}.<key>=...) instead")
        if override.is_sweep_override() or override.is_delete():
            raise ConfigError(f"{key}: sweeps and deletions cannot be applied to a resumed run")
        OmegaConf.update(cfg, key, override.value(), force_add=True)


def migrate_format1_config(config: DictConfig) -> bool:
    """Turn an mmrl 0.1 (checkpoint format 1) config into today's layout, in place; True if it was one.

    0.1 kept the loop settings in `algo` and wrote PPO's value loss as 0.5 * MSE (today: the MSE,
    so the same loss has half the `vf_coef`).
    """
    algo = config.get("algo")
    if not isinstance(algo, DictConfig) or "total_steps" not in algo:
        return False
    config.total_steps = algo.pop("total_steps")
    config.rollout = {key: algo.pop(key) for key in ("n_envs", "n_steps", "bootstrap_truncated") if key in algo}
    if "vf_coef" in algo:
        algo.vf_coef = algo.vf_coef / 2
    return True


def check_state_compatible(saved: dict, wanted: dict, key: str) -> None:
    """ConfigError if overrides change what the checkpoint's env state was built for.

    The env's tensors hold `rollout.n_envs` copies of a `data` layout: neither can change on resume.
    """
    if saved.get("data") != wanted.get("data"):
        changed = sorted(k for k in set(saved["data"]) | set(wanted["data"]) if saved["data"].get(k) != wanted["data"].get(k))
        raise ConfigError(f"data.{changed[0]}: cannot change when resuming (the checkpoint holds the env state it was "
                          f"trained with; start a new run instead)")
    if saved.get("rollout", {}).get("n_envs") != wanted.get("rollout", {}).get("n_envs"):
        raise ConfigError(f"rollout.n_envs: cannot change when resuming (the checkpoint holds the state of "
                          f"{saved['rollout']['n_envs']} envs)")


def load_run_checkpoint(value: str, runs_root: str, checkpoint: str, key: str, overrides: list[str] = (),
                        ignore: tuple[str, ...] = ()) -> RunCheckpoint:
    """Resolve `value` to a run and an intact checkpoint; load and check its config and weights."""
    from .builders import policy_for_weights

    run_dir, implied = resolve_run(value, runs_root, key)
    try:
        checkpoint_dir, notes = find_checkpoint(run_dir, checkpoint if checkpoint != LATEST else implied)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}") from None
    try:
        config = OmegaConf.load(checkpoint_dir / "config.yaml")
    except Exception as e:
        raise ConfigError(f"{key}: {checkpoint_dir}/config.yaml is not a valid config ({str(e).splitlines()[0]})") from None
    if not isinstance(config, DictConfig):
        raise ConfigError(f"{key}: {checkpoint_dir}/config.yaml is not a mapping")
    if verify(checkpoint_dir)["format"] != FORMAT:
        if key == "resume":
            raise ConfigError(f"resume: {checkpoint_dir} is a checkpoint of mmrl 0.1 (format 1), which this version "
                              f"cannot continue; evaluate it with `mmrl eval run=...` or start a new run")
        if migrate_format1_config(config):
            notes.append(f"{checkpoint_dir} is an mmrl 0.1 checkpoint: its config was migrated to today's layout")
    if config.get("data", {}).get("type") == "gym" and "constant_mission" not in config.data:
        config.data.constant_mission = "keep"  # runs from before the key existed fed every mission
    saved = OmegaConf.to_container(config)
    apply_overrides(config, list(overrides), ignore)
    check_state_compatible(saved, OmegaConf.to_container(config), key)
    typed = validate(config)
    try:
        policy = policy_for_weights(typed, checkpoint_dir / "model.safetensors", torch.device("cpu"))
        check_model_fits(checkpoint_dir / "model.safetensors", policy)
    except CheckpointError as e:
        raise ConfigError(f"{key}: {e}") from None
    return RunCheckpoint(run_dir, checkpoint_dir, config, typed, notes)
