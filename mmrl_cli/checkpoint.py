"""Atomic, pickle-free checkpoints: save, verify, find the newest complete one, load.

A checkpoint is a directory ``<run>/checkpoints/<update:08d>/`` holding

- one safetensors file per named module: ``model.safetensors`` for the policy (a plain file any
  tool can read), ``<name>.safetensors`` for any other module an algorithm or method trains or
  uses (a teacher, a world model);
- ``state.safetensors``: every other tensor of the training state (optimiser moments, RNG
  states, the batched env's tensors, the current observation);
- ``config.yaml``: the composed config that produced it;
- ``meta.json``, written last: the non-tensor state (counters, optimiser hyper-parameters, RNG
  states of Python and NumPy) as plain JSON, which file holds which module, and the SHA-256 of
  every other file.

On load, each module's weights are checked against the module built from the config: by
default the same tensor names and shapes; a module whose shapes legitimately change (a pruned
or factorised layer) states its own rule with a ``check_checkpoint_shapes(saved_shapes)`` method.

Writing goes to a temporary directory (every file fsynced), which is renamed into place; the
``latest`` pointer file is replaced last. A crash at any moment (even ``kill -9`` halfway through
a write) therefore leaves either the old checkpoint set or the new one, never a half-written
checkpoint under a real name. Loading re-hashes the files, so a truncated or corrupted
checkpoint is refused (or, when resuming from ``latest``, skipped for the newest complete one).
Nothing is ever unpickled: tensors go through safetensors, everything else through JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import CHECKPOINT_NAME

FORMAT = "mmrl-checkpoint-2"
# Format 1 (mmrl 0.1: the policy only, PPO's state layout) still verifies and evaluates; it cannot be resumed.
OLD_FORMATS = ("mmrl-checkpoint-1",)
FILES = ("model.safetensors", "state.safetensors", "config.yaml")  # in every checkpoint
POLICY = "policy"
MODULE_FILE = re.compile(r"^[a-z][a-z0-9_]*\.safetensors$")
LATEST = "latest"
UPDATE_MAX = 2**63 - 1  # update counters are int64 everywhere they are stored
# safetensors' names of the dtypes torch modules hold (header dtypes are compared with the module's)
SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                      torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                      torch.uint8: "U8", torch.bool: "BOOL"}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def module_file(name: str) -> str:
    """File of a named module in a checkpoint: the policy is ``model.safetensors``."""
    return FILES[0] if name == POLICY else f"{name}.safetensors"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the config (one line)."""


def checkpoint_name(update: int) -> str:
    """Directory name of the checkpoint taken after `update` updates."""
    return f"{update:08d}"


# ------------------------------------------------------------------- nested state <-> files
def split_tensors(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list `tree` into `tensors`; return the JSON rest.

    A tensor is replaced by ``{"__tensor__": key}``; a dict with non-string keys (optimiser
    state is keyed by parameter index) by ``{"__items__": [[key, value], ...]}``.
    """
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        if all(isinstance(k, str) for k in tree):
            return {k: split_tensors(v, f"{prefix}.{k}", tensors) for k, v in tree.items()}
        return {"__items__": [[k, split_tensors(v, f"{prefix}.{k}", tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store a {type(tree).__name__} in a checkpoint ({prefix})")


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `split_tensors`."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__items__" in tree:
            return {k: join_tensors(v, tensors) for k, v in tree["__items__"]}
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


# ----------------------------------------------------------------------------- writing
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def temp_path(path: Path) -> Path:
    """Where to write a file before `publish` moves it to `path` (same directory, hidden)."""
    return path.with_name(f".{path.name}.tmp")


def publish(tmp: Path, path: Path) -> None:
    """Make the fully written `tmp` appear as `path` atomically: fsync, rename, fsync the dir.

    A reader (or a crash) sees either the old `path` or the complete new one, never a part.
    """
    _fsync_file(tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically."""
    tmp = temp_path(path)
    tmp.write_text(text)
    publish(tmp, path)


def cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of a state dict, as safetensors wants them."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


# ------------------------------------------------------------- compact sparse weights
# A weight that is mostly zeros (a pruned layer) is stored as its non-zero values plus a bit mask
# (``<name>::values``, ``<name>::mask``), with its shape in the file's header; `read_weights`
# restores the dense tensor. At 90% sparsity that is 0.1 x 4 + 1/8 = 0.525 bytes per weight
# instead of 4. Everything else is stored as it is.
SPARSE_SUFFIXES = ("::values", "::mask")
SPARSE_MIN_ZEROS = 0.5  # store compactly when at least this fraction of a tensor is zero
SPARSE_MIN_SIZE = 1024  # ... and it has at least this many elements
STRUCTURE_KEY = "mmrl_structure"  # header key: the module's shapes differ from its config's (pruned, factorised)


def encode_sparse(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """Mostly-zero float tensors as (values, packed bit mask); returns the tensors and their shapes."""
    out, shapes = {}, {}
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel() >= SPARSE_MIN_SIZE:
            nonzero = tensor.reshape(-1) != 0
            if 1 - nonzero.float().mean().item() >= SPARSE_MIN_ZEROS:
                out[name + SPARSE_SUFFIXES[0]] = tensor.reshape(-1)[nonzero].contiguous()
                out[name + SPARSE_SUFFIXES[1]] = torch.from_numpy(np.packbits(nonzero.numpy()))
                shapes[name] = list(tensor.shape)
                continue
        out[name] = tensor
    return out, shapes


def decode_sparse(tensors: dict[str, torch.Tensor], shapes: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Inverse of `encode_sparse`."""
    out = {k: v for k, v in tensors.items() if not k.endswith(SPARSE_SUFFIXES)}
    for name, shape in shapes.items():
        numel = int(np.prod(shape))
        mask = torch.from_numpy(np.unpackbits(tensors[name + SPARSE_SUFFIXES[1]].numpy(), count=numel).astype(bool))
        values = tensors[name + SPARSE_SUFFIXES[0]]
        dense = values.new_zeros(numel)
        dense[mask] = values
        out[name] = dense.reshape(shape)
    return out


def write_weights(tensors: dict[str, torch.Tensor], path: Path, structure: str | None = None) -> None:
    """Write a state dict to safetensors file `path` (mostly-zero tensors compactly); `structure`:
    a note in the header that the module's shapes are not its config's (see `adopt_structure`)."""
    encoded, sparse_shapes = encode_sparse(cpu_copies(tensors))
    metadata = {"mmrl_sparse": json.dumps(sparse_shapes)} if sparse_shapes else {}
    if structure:
        metadata[STRUCTURE_KEY] = structure
    save_file(encoded, str(path), metadata=metadata or None)


def file_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]})") from None


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in safetensors file `path` (compact sparse tensors made dense again)."""
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} could not be read ({str(e).splitlines()[0]})") from None
    return decode_sparse(tensors, sparse_shapes(path, file_metadata(path)))


def save_weights(tensors: dict[str, torch.Tensor], path: Path, structure: str | None = None) -> None:
    """Write a state dict as one safetensors file, atomically (see `write_weights`)."""
    tmp = temp_path(path)
    write_weights(tensors, tmp, structure)
    publish(tmp, path)


def save_checkpoint(root: Path, update: int, modules: dict[str, dict[str, torch.Tensor]], state: dict,
                    config_yaml: str, keep_last: int, structures: dict[str, str] | None = None) -> Path:
    """Write checkpoint `update` under `root` atomically, point `latest` at it, prune old ones.

    `modules` maps names to state dicts (``"policy"`` is required); `state` is a nested dict of
    tensors and plain values; `structures` notes modules whose shapes are not their config's.
    """
    if POLICY not in modules:
        raise ValueError("a checkpoint needs the 'policy' module")
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(update)
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {module: module_file(module) for module in modules}
    for module, weights in modules.items():
        write_weights(weights, tmp / files[module], (structures or {}).get(module))
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, "state", tensors)
    save_file(tensors, str(tmp / FILES[1]))
    (tmp / FILES[2]).write_text(config_yaml)
    written = sorted(set(FILES) | set(files.values()))
    for file in written:
        _fsync_file(tmp / file)
    meta = {"format": FORMAT, "update": update, "modules": files, "sha256": {f: sha256(tmp / f) for f in written},
            "state": skeleton}
    (tmp / "meta.json").write_text(json.dumps(meta))
    _fsync_file(tmp / "meta.json")
    _fsync_dir(tmp)
    final = root / name
    if final.exists():  # re-saving an update (a resumed run passing the same point again)
        old = root / f".old-{name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST, name + "\n")
    prune(root, keep_last, keep=name)
    return final


def prune(root: Path, keep_last: int, keep: str) -> None:
    """Delete all but the `keep_last` newest checkpoints (never `keep`), and leftover temp dirs."""
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name))
    for name in names[:-keep_last]:
        if name != keep:
            shutil.rmtree(root / name)
    for leftover in root.glob(".tmp-*"):
        if leftover.name != f".tmp-{keep}":
            shutil.rmtree(leftover, ignore_errors=True)


def set_aside_newer(root: Path, name: str) -> list[str]:
    """Move checkpoints newer than `name` to ``<root>/abandoned/`` (kept, never loaded).

    Resuming from an older checkpoint starts a new timeline; its checkpoints must not mix
    with the abandoned one's (pruning and `latest` fallback go by name).
    """
    newer = [n for n in checkpoint_names(root) if n > name]
    if newer:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (root / "abandoned").mkdir(exist_ok=True)
        for n in newer:
            os.replace(root / n, root / "abandoned" / f"{n}-{stamp}")
        _fsync_dir(root)
    return newer


# ----------------------------------------------------------------------------- reading
def verify(path: Path) -> dict:
    """The metadata of a complete, intact checkpoint directory; CheckpointError otherwise.

    meta.json holds the checksums of the other files but has none itself, so everything read
    from it later is checked here: the kinds of its fields, the update counter's range, and that
    every tensor the training state refers to is stored (with `check_meta_state`).
    """
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete mmrl checkpoint (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}/meta.json is corrupted (not valid JSON)") from None
    except OSError as e:  # removed by a concurrent prune, or not readable
        raise CheckpointError(f"{path}/meta.json could not be read ({e.strerror})") from None
    if (not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS)
            or not isinstance(meta.get("sha256"), dict)):
        raise CheckpointError(f"{path}/meta.json is not an {FORMAT} file")
    modules = meta.setdefault("modules", {POLICY: FILES[0]})  # format 1: the policy only
    if (not isinstance(modules, dict) or modules.get(POLICY) != FILES[0]
            or not all(isinstance(f, str) and MODULE_FILE.match(f) for f in modules.values())):
        raise CheckpointError(f"{path}/meta.json names module files that are not plain <name>.safetensors files "
                              f"(or not the policy's {FILES[0]})")
    update = meta.get("update")
    if type(update) is not int or not 0 <= update <= UPDATE_MAX:
        raise CheckpointError(f"{path}/meta.json: update is {update!r}, expected an integer in [0, {UPDATE_MAX}]")
    for file in sorted(set(FILES) | set(modules.values())):
        if not (path / file).is_file():
            raise CheckpointError(f"{path} is incomplete ({file} is missing)")
        try:
            digest = sha256(path / file)
        except OSError as e:
            raise CheckpointError(f"{path}/{file} could not be read ({e.strerror})") from None
        if digest != meta["sha256"].get(file):
            raise CheckpointError(f"{path}/{file} is truncated or corrupted (its checksum does not match meta.json)")
    for file in sorted(set(modules.values())):
        tensor_specs(path / file)  # the safetensors headers parse (never unpickled: safetensors has no code)
    check_meta_state(meta.get("state"), tensor_specs(path / FILES[1]), f"{path}/meta.json")
    return meta


def check_meta_state(state: Any, stored: dict, where: str) -> None:
    """CheckpointError unless the training state skeleton in meta.json is well formed: a mapping
    whose tensor references (``{"__tensor__": key}``) name tensors of ``state.safetensors`` and
    whose ``{"__items__": [[key, value], ...]}`` entries are pairs with integer or string keys."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the training state is {type(state).__name__}, expected a mapping")

    def walk(tree: Any, at: str) -> None:
        if isinstance(tree, dict) and "__tensor__" in tree:
            if set(tree) != {"__tensor__"} or not isinstance(tree["__tensor__"], str) or tree["__tensor__"] not in stored:
                raise CheckpointError(f"{where}: {at} refers to a tensor {tree.get('__tensor__')!r} that is not stored")
        elif isinstance(tree, dict) and "__items__" in tree:
            items = tree["__items__"]
            if set(tree) != {"__items__"} or not isinstance(items, list) or not all(
                    isinstance(i, list) and len(i) == 2 and type(i[0]) in (int, str) for i in items):
                raise CheckpointError(f"{where}: {at} is not a list of [key, value] pairs")
            for key, value in items:
                walk(value, f"{at}.{key}")
        elif isinstance(tree, dict):
            for key, value in tree.items():
                walk(value, f"{at}.{key}")
        elif isinstance(tree, list):
            for i, value in enumerate(tree):
                walk(value, f"{at}.{i}")

    walk(state, "state")


def checkpoint_names(root: Path) -> list[str]:
    """Names of the checkpoint directories under `root`, newest first."""
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)), reverse=True)


def find_checkpoint(run_dir: Path, name: str = LATEST) -> tuple[Path, list[str]]:
    """The checkpoint directory to load, and notes on any checkpoint that had to be skipped.

    `name` is a checkpoint name (that one, intact, or an error) or ``latest``: the one the
    ``latest`` pointer names if it is intact, else the newest intact one.
    """
    root = run_dir / "checkpoints"
    if name != LATEST:
        path = root / name
        if not path.is_dir():
            available = ", ".join(checkpoint_names(root)) or "none"
            raise CheckpointError(f"no checkpoint {name!r} in {root} (available: {available})")
        verify(path)
        return path, []
    notes: list[str] = []
    candidates = checkpoint_names(root)
    pointer = root / LATEST
    if pointer.is_file():
        named = pointer.read_text().strip()
        if CHECKPOINT_NAME.match(named):
            candidates = [named] + [c for c in candidates if c != named]
    for candidate in candidates:
        try:
            verify(root / candidate)
            return root / candidate, notes
        except CheckpointError as e:
            notes.append(f"skipped checkpoint {candidate}: {e}")
    if notes:
        raise CheckpointError(f"no intact checkpoint in {root} ({notes[-1]})")
    raise CheckpointError(f"{run_dir} has no checkpoint yet")


def tensor_specs(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor names, dtypes (safetensors' names: ``F32``, ``I64``, ...) and shapes of a safetensors
    file, from its header (compact sparse tensors by their dense shape, once their parts are
    checked to add up: `check_sparse_parts`)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            specs = {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
            metadata = f.metadata() or {}
            sparse = sparse_shapes(path, metadata)
            masks = {name: f.get_tensor(name + SPARSE_SUFFIXES[1]) for name in sparse
                     if specs.get(name + SPARSE_SUFFIXES[1], ("",))[0] == "U8"}
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({str(e).splitlines()[0]})") from None
    dense = {k: v for k, v in specs.items() if not k.endswith(SPARSE_SUFFIXES)}
    for name, shape in sparse.items():
        dense[name] = check_sparse_parts(path, name, shape, specs, masks.get(name))
    return dense


def sparse_shapes(path: Path, metadata: dict[str, str]) -> dict[str, list[int]]:
    """The dense shapes of a file's compact sparse tensors (its ``mmrl_sparse`` header entry), checked."""
    text = metadata.get("mmrl_sparse")
    if text is None:
        return {}
    try:
        shapes = json.loads(text)
    except ValueError:
        raise CheckpointError(f"{path}: its mmrl_sparse header entry is not valid JSON") from None
    if not isinstance(shapes, dict) or not all(
            isinstance(shape, list) and all(type(n) is int and 0 <= n <= UPDATE_MAX for n in shape)
            for shape in shapes.values()):
        raise CheckpointError(f"{path}: its mmrl_sparse header entry is not a mapping of names to shapes")
    return shapes


def check_sparse_parts(path: Path, name: str, shape: list[int], specs: dict, mask: torch.Tensor | None) -> tuple:
    """(dtype, dense shape) of compact sparse tensor `name`: its bit mask is a uint8 vector of
    ceil(numel / 8) bytes, its values a float vector with one entry per set bit."""
    numel = math.prod(shape)
    values = specs.get(name + SPARSE_SUFFIXES[0])
    mask_spec = specs.get(name + SPARSE_SUFFIXES[1])
    problem = None
    if values is None or mask_spec is None:
        problem = "its values or its mask are missing"
    elif mask_spec != ("U8", ((numel + 7) // 8,)):
        problem = f"its mask is {mask_spec[0]} {list(mask_spec[1])}, expected U8 [{(numel + 7) // 8}]"
    elif values[0] not in FLOAT_DTYPES or len(values[1]) != 1:
        problem = f"its values are {values[0]} {list(values[1])}, expected a float vector"
    elif mask is not None and int(np.unpackbits(mask.numpy(), count=numel).sum()) != values[1][0]:
        problem = f"its mask has another number of set bits than its {values[1][0]} values"
    if problem:
        raise CheckpointError(f"{path}: the compact sparse tensor {name} is inconsistent ({problem})")
    return values[0], tuple(shape)


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file, read from its header only (compact sparse
    tensors by their dense shape)."""
    return {name: shape for name, (_, shape) in tensor_specs(path).items()}


def check_model_fits(path: Path, model: torch.nn.Module) -> None:
    """CheckpointError unless the weights in `path` fit `model`.

    The rule is the module's own ``check_checkpoint_shapes(saved_shapes)`` if it has one (for
    modules whose shapes change by design), else: exactly the model's tensor names and shapes.
    """
    specs = tensor_specs(path)
    saved = {name: shape for name, (_, shape) in specs.items()}
    for key, tensor in model.state_dict().items():  # a tensor's kind never changes, whatever its shape
        wanted = SAFETENSORS_DTYPES.get(tensor.dtype)
        if key in specs and wanted is not None and specs[key][0] != wanted:
            raise CheckpointError(f"{path} does not match the configured model ({key} is {specs[key][0]} in the "
                                  f"checkpoint, {wanted} in the model)")
    own_rule = getattr(model, "check_checkpoint_shapes", None)
    if own_rule is not None:
        problem = own_rule(saved)
        if problem:
            raise CheckpointError(f"{path} does not fit the configured {type(model).__name__} ({problem})")
        return
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise CheckpointError(f"{path} does not match the configured model ({what}; was it trained with another model config?)")
    for key, shape in expected.items():
        if saved[key] != shape:
            raise CheckpointError(
                f"{path} does not match the configured model ({key} has shape {list(saved[key])} in the checkpoint, "
                f"{list(shape)} in the model)"
            )


def load_model(path: Path, model: torch.nn.Module) -> None:
    """Load safetensors weights into `model` after checking names and shapes."""
    check_model_fits(path, model)
    model.load_state_dict(read_weights(path))


def load_modules(path: Path, modules: dict[str, torch.nn.Module]) -> None:
    """Load each named module from checkpoint directory `path` (verified), checking that it fits."""
    files = verify(path)["modules"]
    for name, module in modules.items():
        if name not in files:
            raise CheckpointError(f"{path} holds no '{name}' module (it has: {', '.join(sorted(files))})")
        load_model(path / files[name], module)


def load_state(path: Path) -> dict:
    """The nested training state of a verified checkpoint directory."""
    meta = verify(path)
    try:
        tensors = load_file(str(path / FILES[1]))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}/{FILES[1]} could not be read ({str(e).splitlines()[0]})") from None
    try:
        return join_tensors(meta["state"], tensors)
    except KeyError as e:
        raise CheckpointError(f"{path}/meta.json refers to a tensor {e} that is not stored") from None


# ------------------------------------------------------------ checking a loaded state
def state_mismatch(saved: Any, live: Any, where: str, other_device: bool = False) -> str | None:
    """How the training state `saved` (read from a checkpoint) differs in kind from `live` (what
    the running objects' ``state_dict()`` gives now), or None when it fits: the same keys, list
    lengths and kinds of values, every tensor of the same dtype and shape, every integer >= 0
    (each counts something) and every float finite.

    Exceptions, each where the loader copes: an empty live mapping takes any mapping (state that
    fills lazily, an optimiser's moments, is checked once loaded: `optimizer_state_mismatch`); an
    optimiser's parameter group compares only the keys both have (torch adds keys across versions
    and fills in missing ones); with `other_device` (saved on another device type) a generator
    state (a uint8 vector) may have any length (the generator is reseeded).
    """
    if isinstance(live, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return f"{where} is {type(saved).__name__}, expected a tensor"
        generator_state = other_device and live.dtype == saved.dtype == torch.uint8 and live.dim() == saved.dim() == 1
        if saved.dtype != live.dtype or (saved.shape != live.shape and not generator_state):
            return (f"{where} is a {saved.dtype} tensor of shape {list(saved.shape)}, expected {live.dtype} "
                    f"{list(live.shape)}")
        return None
    if isinstance(live, dict):
        if not isinstance(saved, dict):
            return f"{where} is {type(saved).__name__}, expected a mapping"
        if not live:
            return None
        keys = set(live)
        if "params" in live:  # an optimiser's parameter group
            keys &= set(saved)
        elif set(saved) != keys:
            missing, unexpected = sorted(map(str, keys - set(saved))), sorted(map(str, set(saved) - keys))
            return f"{where} has no {missing[0]}" if missing else f"{where} has an unexpected {unexpected[0]}"
        return next((m for k in live if k in keys and (m := state_mismatch(saved[k], live[k], f"{where}.{k}", other_device))),
                    None)
    if isinstance(live, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(live):
            return f"{where} is not a list of {len(live)} entries"
        return next((m for i, (s, v) in enumerate(zip(saved, live))
                     if (m := state_mismatch(s, v, f"{where}.{i}", other_device))), None)
    if live is None or isinstance(live, (bool, str)):
        return None if type(saved) is type(live) else f"{where} is {saved!r}, expected a {type(live).__name__}"
    if isinstance(live, int):
        return None if type(saved) is int and saved >= 0 else f"{where} is {saved!r}, expected an integer >= 0"
    if isinstance(live, float):
        ok = type(saved) in (int, float) and math.isfinite(saved)
        return None if ok else f"{where} is {saved!r}, expected a finite number"
    return None


def optimizer_state_mismatch(optimizer: torch.optim.Optimizer, where: str) -> str | None:
    """How a loaded optimiser's state does not fit its parameters, or None: every entry belongs to
    one of its parameters and each tensor in it is a scalar (a step count) or of its parameter's shape."""
    params = {id(p): p for group in optimizer.param_groups for p in group["params"]}
    for param, entry in optimizer.state.items():
        if id(param) not in params or not isinstance(entry, dict):
            return f"{where} holds state for a parameter the optimiser does not have"
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                return (f"{where}: {name} has shape {list(value.shape)} where its parameter has "
                        f"{list(param.shape)}")
    return None
