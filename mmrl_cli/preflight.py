"""Checks by *kind of value* that run before any work: paths, memory, numbers every key shares.

The schemas in config.py check each key's own range; this module checks what whole classes of
keys have in common, so a new key of the same kind is covered without a new rule:

- `check_numbers`: every float key is finite; every int key fits the consumer that reads it
  (C ints, 2**31 - 1, except step counters, which are int64);
- `check_output_dir`: a directory mmrl will write into can be created and written;
- `check_memory`: the largest allocations a run makes (env state, rollout buffer, evaluation
  envs, model weights with gradients and optimiser state) fit in the memory available.
Each raises a ConfigError: one line naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path

from .config import ConfigError, TrainConfig

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Keys counting environment steps (summed in int64 tensors and Python ints) may exceed int32.
STEP_COUNT_KEYS = {"total_steps", "eval.every_steps"}


def _walk(obj, prefix: str = ""):
    """(dotted key, value) of every leaf of a config dataclass (lists are leaves)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        else:
            yield key, value


def check_numbers(cfg) -> None:
    """Every float finite; every int within the range of what reads it (see the module docstring)."""
    for key, value in _walk(cfg):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, bool):
                continue
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}: expected a finite number, got {v}")
            if isinstance(v, int):
                limit = INT64_MAX if key in STEP_COUNT_KEYS else INT32_MAX
                if abs(v) > limit:
                    raise ConfigError(f"{key}: expected an integer of at most {limit:,} in size, got {v:,}")


def check_output_dir(key: str, path: str | Path, probe: bool = True) -> None:
    """`path` is a directory that exists or can be created, and can be written.

    The nearest existing ancestor must be a directory; with `probe`, a temporary directory is
    made (and removed) in it, which is the only test that also holds for root and for special
    filesystems such as /proc.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{key}: {path} exists and is not a directory")
    ancestor = target
    while not ancestor.exists():
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: {path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path} is not writable (no write permission on {ancestor})")
    if probe:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".mmrl-write-test-", dir=ancestor))
        except OSError as e:
            raise ConfigError(f"{key}: {path} is not writable ({e.strerror} in {ancestor})") from None


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux: MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63  # unknown: do not refuse


def observation_bytes(spec: dict) -> int:
    """Bytes of one observation of an env with this observation spec."""
    import torch

    return sum(math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in spec.values())


def _blame(cfg: TrainConfig, keys: list[str]) -> str:
    """Of `keys`, the one furthest above its default value (the likely culprit)."""
    default = TrainConfig()
    default.data = type(cfg.data)()
    default.model = type(cfg.model)()

    def ratio(key: str) -> float:
        value, base = _get(cfg, key), _get(default, key)
        return value / base if base else float(value)

    return max(keys, key=ratio)


def _get(obj, key: str):
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(cfg: TrainConfig, observation_spec: dict, count_parameters) -> None:
    """Refuse a run whose largest allocations cannot fit in the available memory.

    `observation_spec` is the env's; `count_parameters()` builds the policy on the meta device
    (no memory) and counts its parameters. Estimates are lower bounds of what the run allocates.
    """
    available = available_memory()
    per_obs = observation_bytes(observation_spec)
    size_keys = ["data.grid_size", "data.tile_size"] if cfg.data.type == "goto" else []
    # The built-in env keeps about four image-sized buffers per env (image, background, final obs, ...).
    env_bytes = 4 * per_obs if cfg.data.type == "goto" else per_obs
    if env_bytes > available:
        key = _blame(cfg, size_keys) if size_keys else "data.env_id"
        raise ConfigError(f"{key}: one env's observation needs {_gib(env_bytes)}, more than the {_gib(available)} "
                          f"of memory available")
    # float32 per-step values (reward, value, log-prob, ...) besides the observations
    rollout_bytes = cfg.rollout.n_envs * cfg.rollout.n_steps * (per_obs + 64) + cfg.rollout.n_envs * env_bytes
    if rollout_bytes > available:
        key = _blame(cfg, ["rollout.n_envs", "rollout.n_steps", *size_keys])
        raise ConfigError(f"{key}: the rollout (rollout.n_envs x rollout.n_steps observations) needs "
                          f"{_gib(rollout_bytes)}, more than the {_gib(available)} of memory available")
    eval_envs = cfg.eval.episodes if cfg.data.type == "goto" else min(cfg.eval.episodes, 64)
    if eval_envs * env_bytes > available:
        raise ConfigError(f"eval.episodes: evaluating {cfg.eval.episodes:,} episodes at once needs "
                          f"{_gib(eval_envs * env_bytes)}, more than the {_gib(available)} of memory available")
    parameters = count_parameters()
    # weights, gradients and two Adam moments in float32
    model_bytes = 16 * parameters
    if model_bytes > available:
        model_keys = [f"model.{f.name}" for f in dataclasses.fields(cfg.model)
                      if isinstance(getattr(cfg.model, f.name), int) and not isinstance(getattr(cfg.model, f.name), bool)]
        raise ConfigError(f"{_blame(cfg, model_keys)}: the model has {parameters:,} parameters, needing "
                          f"{_gib(model_bytes)} to train, more than the {_gib(available)} of memory available")
