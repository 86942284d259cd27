"""Checks by *kind of value* that run before any work: paths, memory, numbers every key shares.

The schemas in config.py check each key's own range; this module checks what whole classes of
keys have in common, so a new key of the same kind is covered without a new rule:

- `check_numbers`: every float key is finite; every int key fits the consumer that reads it
  (C ints, 2**31 - 1, except step counters, which are int64);
- `check_output_dir`: a directory mmrl will write into can be created and written;
- `check_memory`: the largest allocations a run makes (env state, rollout buffer, evaluation
  envs, model weights with gradients and optimiser state) fit in the memory available;
- `check_name`: a name that becomes part of a path (a run name, a study name) is one plain
  path component, so it cannot climb out of the directory it names something in;
- `check_path`: a path the user gives is one the filesystem can take (length, no NUL byte).
Each raises a ConfigError: one line naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from pathlib import Path

from .config import ConfigError, TrainConfig
from .envs.spec import eval_envs as envs_at_once, traits_of

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Keys counting environment steps (summed in int64 tensors and Python ints) may exceed int32.
STEP_COUNT_KEYS = {"total_steps", "eval.every_steps"}
NAME_CHARS = re.compile(r"[A-Za-z0-9_.-]+")
NAME_MAX_CHARS = 100
# Linux's limits (and most filesystems'): a path of at most PATH_MAX - 1 bytes, each part at most
# NAME_MAX bytes; beyond them every call fails with ENAMETOOLONG.
PATH_MAX = 4096
NAME_MAX = 255
EPISODE_RESULT_BYTES = 17  # what evaluation keeps per episode: float64 return, int64 length, bool success


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


def shown(value: str, limit: int = 60) -> str:
    """`value` quoted for an error line, cut short when it is long (the line stays one line)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value):,} characters)"


def check_name(key: str, value: str | None) -> None:
    """`value` can name one directory or file: letters, digits, '-', '_' and '.', not starting with
    '.' or '-', at most 100 characters. No '/', no '..': a name never reaches outside the directory
    it is used in. None (no name given) passes. Every key whose value becomes part of a path goes
    through here."""
    if value is None:
        return
    if not isinstance(value, str) or not NAME_CHARS.fullmatch(value) or value[0] in ".-" \
            or len(value) > NAME_MAX_CHARS:
        raise ConfigError(f"{key}: expected a name of at most {NAME_MAX_CHARS} letters, digits, '-', '_' or '.' "
                          f"(not starting with '.' or '-'), got {shown(str(value))}")


def check_path(key: str, value: str | Path | None) -> None:
    """`value` is a path the filesystem can take: no NUL byte, at most PATH_MAX - 1 bytes once made
    absolute, no part longer than NAME_MAX bytes. Beyond those limits every file operation fails
    with ENAMETOOLONG, which would otherwise surface as a traceback from deep inside. None passes."""
    if value is None:
        return
    text = str(value)
    if "\0" in text:
        raise ConfigError(f"{key}: a path cannot contain a NUL byte, got {shown(text)}")
    absolute = os.fsencode(os.path.abspath(os.path.expanduser(text)))
    if len(absolute) >= PATH_MAX:
        raise ConfigError(f"{key}: a path of {len(absolute):,} bytes (made absolute) is longer than the "
                          f"{PATH_MAX - 1:,} the filesystem takes, got {shown(text)}")
    longest = max(absolute.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise ConfigError(f"{key}: a path part of {len(longest):,} bytes is longer than the {NAME_MAX} a file "
                          f"name may have, got {shown(text)}")


def check_output_dir(key: str, path: str | Path, probe: bool = True) -> None:
    """`path` is a directory that exists or can be created, and can be written.

    The nearest existing ancestor must be a directory; with `probe`, a temporary directory is
    made (and removed) in it, which is the only test that also holds for root and for special
    filesystems such as /proc.
    """
    check_path(key, path)
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
        if isinstance(value, (list, tuple)):  # a list of sizes counts by its largest
            value, base = max(value, default=0), max(base, default=0)
        return value / base if base else float(value)

    return max(keys, key=ratio)


def _get(obj, key: str):
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(cfg: TrainConfig, observation_spec: dict, measure_model) -> None:
    """Refuse a run whose largest allocations cannot fit in the available memory.

    `observation_spec` is the env's; `measure_model()` builds the policy on the meta device (no
    memory) and returns its parameter count and its layer-output elements per observation. Estimates are lower bounds of what the run allocates.
    """
    available = available_memory()
    per_obs = observation_bytes(observation_spec)
    size_keys = list(traits_of(cfg.data).size_keys)
    env_bytes = bytes_per_env(cfg, observation_spec)
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
    eval_envs = envs_at_once(cfg.data, cfg.eval.episodes)
    if eval_envs * env_bytes > available:
        raise ConfigError(f"eval.episodes: evaluating {cfg.eval.episodes:,} episodes at once needs "
                          f"{_gib(eval_envs * env_bytes)}, more than the {_gib(available)} of memory available")
    parameters, activations_per_sample = measure_model()
    model_keys = [f"model.{f.name}" for f in dataclasses.fields(cfg.model) if _is_size(getattr(cfg.model, f.name))]
    # weights, gradients and two Adam moments in float32
    model_bytes = 16 * parameters
    if model_bytes > available:
        raise ConfigError(f"{_blame(cfg, model_keys)}: the model has {parameters:,} parameters, needing "
                          f"{_gib(model_bytes)} to train, more than the {_gib(available)} of memory available")
    # float32 layer outputs of the largest batch one forward pass sees (kept for the backward pass)
    largest_batch = max(getattr(cfg.algo, "batch_size", 0), cfg.rollout.n_envs, eval_envs)
    activation_bytes = 4 * activations_per_sample * largest_batch
    if model_bytes + activation_bytes > available:
        raise ConfigError(f"{_blame(cfg, model_keys)}: one forward pass over {largest_batch:,} observations needs "
                          f"{_gib(activation_bytes)} of layer outputs besides {_gib(model_bytes)} for the weights, "
                          f"more than the {_gib(available)} of memory available")


def bytes_per_env(cfg: TrainConfig, observation_spec: dict) -> int:
    """Memory one env of the batch holds: the built-in env keeps about four image-sized buffers
    per env (image, background, final obs, ...), a gymnasium env about one observation."""
    return traits_of(cfg.data).buffers_per_env * observation_bytes(observation_spec)


def check_inference_memory(cfg: TrainConfig, observation_spec: dict, measure_model, batches: dict[str, int]) -> None:
    """Refuse batched inference that cannot fit: for each key, that many envs at once and one
    forward pass (no gradients) over their observations (e.g. `mmrl compress`'s report)."""
    available = available_memory()
    env_bytes = bytes_per_env(cfg, observation_spec)
    _, activations_per_sample = measure_model()
    for key, count in batches.items():
        needed = count * (env_bytes + 4 * activations_per_sample)
        if needed > available:
            raise ConfigError(f"{key}: {count:,} observations at once need {_gib(needed)}, more than the "
                              f"{_gib(available)} of memory available")


def check_episode_results(key: str, episodes: int) -> None:
    """Refuse an evaluation whose per-episode results alone cannot fit in the available memory
    (`key` names the episode count, e.g. `episodes` of `mmrl eval`)."""
    available = available_memory()
    needed = episodes * EPISODE_RESULT_BYTES
    if needed > available:
        raise ConfigError(f"{key}: keeping the results of {episodes:,} episodes needs {_gib(needed)}, more than the "
                          f"{_gib(available)} of memory available")


def check_gif_memory(cfg: TrainConfig, gif, observation_spec: dict) -> None:
    """Refuse a GIF whose frames cannot fit: `gif.episodes` x (steps recorded + 1) frames, each kept
    as seen and as drawn until the file is written; blames `gif.episodes` or `gif.max_steps`,
    whichever is further above its default."""
    from .config import GifConfig
    from .gif import frame_bytes, steps_recorded

    if not gif.episodes:
        return
    available = available_memory()
    steps = steps_recorded(cfg.data, gif.max_steps)
    needed = gif.episodes * (steps + 1) * frame_bytes(cfg.data, observation_spec, bool(getattr(gif, "imagined", 0)))
    if needed > available:
        default = GifConfig()
        key = "gif.episodes" if gif.episodes / default.episodes > steps / default.max_steps else "gif.max_steps"
        raise ConfigError(f"{key}: {gif.episodes:,} GIF episodes of up to {steps:,} steps need {_gib(needed)} of frames, "
                          f"more than the {_gib(available)} of memory available")


def _is_size(value) -> bool:
    """An integer (or list of integers) config value: a size the memory estimate may blame."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return bool(values) and all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def activation_elements_per_sample(policy, observation_spec: dict) -> int:
    """Elements of every leaf module's output for one observation, measured by running `policy`
    on the meta device (shapes only, no memory). 0 when the model cannot run there."""
    import torch

    total = 0

    def count(module, inputs, output):
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel()

    leaves = [m for m in policy.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        obs = {key: torch.zeros((1, *shape), dtype=dtype, device="meta") for key, (shape, dtype) in observation_spec.items()}
        with torch.no_grad():
            policy(obs)
    except Exception:  # a model with data-dependent steps cannot run on meta: no estimate
        total = 0
    finally:
        for hook in hooks:
            hook.remove()
    return total
