"""Demonstration datasets: a resumable, verified writer and a reader that yields shuffled minibatches.

A dataset is a directory:

- ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: consecutive episodes, each
  shard the same number of them (the last may hold fewer). Tensors, episode-major:
  ``obs.<key>`` (one per observation key, exactly as the env adapter feeds the policy),
  ``actions`` int64, ``rewards`` float32, ``dones`` bool (the episode ended after this step),
  ``truncated`` bool (ended by the time limit, or the expert gave up), ``episode_ids`` int64
  (the episode index k of each step); and per episode ``returns`` float32, ``lengths`` int64,
  ``success`` bool, ``levels`` int64 (the level id or env seed it played). The file's header
  names the shard's episodes and the digest of the dataset's identity (below).
- ``manifest.json``: the format version; the identity of the data, that is the env config (the
  ``data`` section), the expert, the observation spec {key: [shape, dtype]}, the number of
  actions and the levels played (split, seed, rule); the planned episodes and episodes per
  shard; every complete shard with its episode range, counts, size and SHA-256; the totals.

Episode k always plays the same level (see the experts' level rules), so a dataset is a pure
function of its identity. Each shard is written to a temporary file, fsynced and renamed into
place, and only then listed in the manifest (replaced the same way). After ``kill -9`` at any
moment the manifest lists only intact shards; running the same command again keeps them and
regenerates exactly the missing episodes: nothing is lost or recorded twice.

The reader (`DemoDataset`) re-hashes every shard, cross-checks each shard's header against the
manifest (an edited manifest no longer matches the shards it describes), and refuses, with one
line naming the problem, a missing, truncated, incomplete or modified dataset, and data recorded
on another env config or with another observation spec than a training run expects
(`check_compatible`). Nothing is ever unpickled: tensors go through safetensors, the rest JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..checkpoint import publish, sha256, temp_path, write_text_atomic
from ..rng import load_generator_state

FORMAT = "mmrl-demos-1"
MANIFEST = "manifest.json"
HEADER_KEY = "mmrl_demos"  # safetensors header entry: the shard's episodes and the identity digest
IDENTITY_KEYS = ("env", "expert", "observation_spec", "num_actions", "levels")
# Per-transition and per-episode tensors of a shard (besides `obs.<key>`), with their dtypes.
TRANSITION_DTYPES = {"actions": torch.int64, "rewards": torch.float32, "dones": torch.bool, "truncated": torch.bool,
                     "episode_ids": torch.int64}
EPISODE_DTYPES = {"returns": torch.float32, "lengths": torch.int64, "success": torch.bool, "levels": torch.int64}
BLOCK_KEYS = tuple(TRANSITION_DTYPES) + tuple(EPISODE_DTYPES)
# Env settings that change neither what the policy sees nor the task (how envs are stepped).
IGNORED_ENV_KEYS = ("vectorization",)
SHARD_ENTRY_KEYS = ("file", "first_episode", "episodes", "transitions", "successes", "return_sum", "bytes", "sha256")
SHARD_FILE = re.compile(r"^shard-[0-9]{5,}\.safetensors$")


class DemoError(ValueError):
    """A demonstration dataset is missing, incomplete, damaged or does not fit (one line)."""


def shard_name(index: int) -> str:
    """File name of shard `index`."""
    return f"shard-{index:05d}.safetensors"


def shard_plan(episodes: int, shard_episodes: int) -> list[tuple[int, int]]:
    """(first episode, episodes) of every shard of a dataset of `episodes` episodes."""
    return [(first, min(shard_episodes, episodes - first)) for first in range(0, episodes, shard_episodes)]


# ------------------------------------------------------------------ identity and specs
def spec_to_json(spec: dict) -> dict[str, list]:
    """An observation spec {key: (shape, torch dtype)} as JSON: {key: [[...shape], "uint8"]}."""
    return {k: [list(shape), str(dtype).removeprefix("torch.")] for k, (shape, dtype) in sorted(spec.items())}


def spec_from_json(spec: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Inverse of `spec_to_json`."""
    return {k: (tuple(shape), getattr(torch, dtype)) for k, (shape, dtype) in spec.items()}


def data_dict(data_cfg) -> dict:
    """A `data` config section (a dataclass, a DictConfig or a dict) as plain JSON values."""
    if dataclasses.is_dataclass(data_cfg):
        data_cfg = dataclasses.asdict(data_cfg)
    else:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(data_cfg, DictConfig):
            data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    return json.loads(json.dumps(dict(data_cfg), sort_keys=True))


def identity_digest(manifest: dict) -> str:
    """SHA-256 of the identity part of a manifest (what every shard's header must name)."""
    identity = {k: manifest[k] for k in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def with_defaults(env: dict) -> dict:
    """An env config with any key its schema gained since it was recorded, at the key's default."""
    from ..config import GROUP_SCHEMAS

    schema = GROUP_SCHEMAS["data"].get(env.get("type"))
    return {**data_dict(schema()), **env} if schema is not None else env


def env_mismatch(recorded: dict, wanted: dict) -> str | None:
    """The first `data.<key>` whose value differs between two env configs, as a phrase; None if none."""
    if recorded.get("type") != wanted.get("type"):
        return f"data is {wanted.get('type')} here but {recorded.get('type')} in the demos"
    recorded, wanted = with_defaults(recorded), with_defaults(wanted)
    for key in sorted(set(recorded) | set(wanted)):
        if key in IGNORED_ENV_KEYS or recorded.get(key) == wanted.get(key):
            continue
        return f"data.{key} is {json.dumps(wanted.get(key))} here but {json.dumps(recorded.get(key))} in the demos"
    return None


def spec_mismatch(recorded: dict, wanted: dict) -> str | None:
    """How two JSON observation specs differ, as a phrase; None if they are the same."""
    for key in sorted(set(recorded) | set(wanted)):
        if key not in recorded:
            return f"observation {key!r} is fed here but not recorded in the demos"
        if key not in wanted:
            return f"observation {key!r} is recorded in the demos but not fed here"
        if list(recorded[key][0]) != list(wanted[key][0]) or recorded[key][1] != wanted[key][1]:
            return (f"observation {key!r} is {tuple(wanted[key][0])} {wanted[key][1]} here but "
                    f"{tuple(recorded[key][0])} {recorded[key][1]} in the demos")
    return None


def check_compatible(manifest: dict, data_cfg, observation_spec: dict, num_actions) -> None:
    """Raise DemoError unless demos with this manifest fit a run on `data_cfg`: the same env
    settings, observation spec and number of discrete actions (`num_actions`: an int, or the
    env's `ActionSpace`)."""
    where = manifest.get("path", "the demos")
    problem = env_mismatch(manifest["env"], data_dict(data_cfg)) \
        or spec_mismatch(manifest["observation_spec"], spec_to_json(observation_spec))
    if problem is None and not getattr(num_actions, "is_discrete", True):
        problem = f"the env's actions are continuous here but {manifest['num_actions']} discrete actions in the demos"
    elif problem is None and int(manifest["num_actions"]) != int(getattr(num_actions, "n", num_actions)):
        problem = f"the env has {getattr(num_actions, 'n', num_actions)} actions here but {manifest['num_actions']} in the demos"
    if problem:
        raise DemoError(f"{where}: recorded for another env: {problem}")


def identity_mismatch(manifest: dict, identity: dict) -> str | None:
    """How an existing dataset's identity differs from the one about to be written; None if equal."""
    problem = env_mismatch(manifest["env"], identity["env"]) \
        or spec_mismatch(manifest["observation_spec"], identity["observation_spec"])
    if problem:
        return problem
    for key in ("expert", "num_actions", "levels"):
        if manifest[key] != identity[key]:
            return f"{key} is {json.dumps(identity[key])} here but {json.dumps(manifest[key])} in the demos"
    return None


# ----------------------------------------------------------------------------- manifest
def read_manifest(path: str | Path) -> dict:
    """The parsed, structurally checked `manifest.json` of the dataset at `path` (with "path" added)."""
    path = Path(path)
    file = path / MANIFEST
    if not path.is_dir():
        raise DemoError(f"{path}: no such directory")
    if not file.is_file():
        raise DemoError(f"{path}: no {MANIFEST} (not a demos dataset, or none of it was written yet)")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DemoError(f"{file}: unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise DemoError(f"{file}: expected format {FORMAT}, found {found!r}")
    missing = [k for k in IDENTITY_KEYS + ("episodes", "shard_episodes", "complete", "shards", "totals") if k not in manifest]
    if missing:
        raise DemoError(f"{file}: damaged (no {missing[0]!r} entry)")
    for entry in manifest["shards"] if isinstance(manifest["shards"], list) else [None]:
        if not isinstance(entry, dict) or set(entry) != set(SHARD_ENTRY_KEYS) or not SHARD_FILE.match(str(entry["file"])):
            raise DemoError(f"{file}: damaged (a shard entry is not {{{', '.join(SHARD_ENTRY_KEYS)}}})")
    manifest["path"] = str(path)
    return manifest


def shard_problem(path: Path, entry: dict) -> str | None:
    """Why the shard a manifest entry describes is not intact (missing, truncated, modified); None if it is."""
    file = path / entry["file"]
    if not file.is_file():
        return f"{entry['file']} is missing"
    size = file.stat().st_size
    if size != entry["bytes"]:
        return f"{entry['file']} is truncated or changed ({size} bytes, {entry['bytes']} expected)"
    if sha256(file) != entry["sha256"]:
        return f"{entry['file']} does not match its SHA-256 in {MANIFEST} (corrupted or modified)"
    return None


def totals(shards: list[dict]) -> dict:
    """Episodes, transitions, successes, success rate, mean length and return over `shards`."""
    episodes = sum(s["episodes"] for s in shards)
    transitions = sum(s["transitions"] for s in shards)
    successes = sum(s["successes"] for s in shards)
    return {
        "episodes": episodes, "transitions": transitions, "successes": successes,
        "success_rate": successes / episodes if episodes else None,
        "mean_length": transitions / episodes if episodes else None,
        "mean_return": sum(s["return_sum"] for s in shards) / episodes if episodes else None,
    }


# ------------------------------------------------------------------------------ writing
def concat_blocks(blocks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One block of consecutive episodes out of several (each a dict of shard tensors)."""
    return blocks[0] if len(blocks) == 1 else {k: torch.cat([b[k] for b in blocks]) for k in blocks[0]}


def check_block(block: dict[str, torch.Tensor], first: int, count: int, spec: dict) -> None:
    """Raise DemoError unless `block` holds episodes ``first .. first + count - 1`` in shard form."""
    missing = [k for k in BLOCK_KEYS + tuple(f"obs.{k}" for k in spec) if k not in block]
    if missing:
        raise DemoError(f"episodes {first}..{first + count - 1}: no {missing[0]!r} tensor")
    lengths = block["lengths"]
    if len(lengths) != count or int(lengths.min()) < 1:
        raise DemoError(f"episodes {first}..{first + count - 1}: expected {count} episodes of at least one step")
    ids = torch.repeat_interleave(torch.arange(first, first + count), lengths)
    if len(block["actions"]) != len(ids) or not torch.equal(block["episode_ids"], ids):
        raise DemoError(f"episodes {first}..{first + count - 1}: steps are not grouped by episode in order")


def shard_tensors(block: dict[str, torch.Tensor], spec: dict) -> dict[str, torch.Tensor]:
    """The tensors of a shard, each in its format dtype, contiguous and on the CPU."""
    dtypes = {**TRANSITION_DTYPES, **EPISODE_DTYPES, **{f"obs.{k}": dtype for k, (_, dtype) in spec.items()}}
    return {k: block[k].to("cpu", dtypes[k]).contiguous() for k in dtypes}


class DemoWriter:
    """Writes a dataset shard by shard; opening a directory that holds part of the same dataset
    continues it (see the module docstring)."""

    def __init__(self, path: str | Path, identity: dict, episodes: int, shard_episodes: int):
        self.path, self.identity = Path(path), identity
        self.episodes, self.shard_episodes = episodes, shard_episodes
        self.plan = shard_plan(episodes, shard_episodes)
        self.spec = spec_from_json(identity["observation_spec"])
        self.shards: list[dict] = []
        self.notes: list[str] = []  # what resuming kept and why it regenerates
        if (self.path / MANIFEST).exists():
            self.keep_intact_shards(read_manifest(self.path))

    def keep_intact_shards(self, manifest: dict) -> None:
        """Keep the longest run of listed shards that match the plan and are intact."""
        problem = identity_mismatch(manifest, self.identity)
        if problem:
            raise DemoError(f"{self.path} holds demos of another config ({problem}); choose another out= or delete it")
        for planned, entry in zip(self.plan, manifest["shards"]):
            if (entry["first_episode"], entry["episodes"]) != planned:
                self.notes.append(f"{entry['file']} holds other episodes than the plan: regenerating from it")
                break
            damage = shard_problem(self.path, entry)
            if damage:
                self.notes.append(f"{damage}: regenerating from it")
                break
            self.shards.append(entry)

    @property
    def pending(self) -> list[tuple[int, int, int]]:
        """(shard index, first episode, episodes) of every shard still to write."""
        return [(i, first, count) for i, (first, count) in enumerate(self.plan) if i >= len(self.shards)]

    @property
    def done(self) -> dict:
        """Totals of the shards written so far."""
        return totals(self.shards)

    def start(self) -> None:
        """Create the directory, drop temporary files of an interrupted write, list what is kept."""
        self.path.mkdir(parents=True, exist_ok=True)
        for stale in self.path.glob(".*.tmp"):
            stale.unlink()
        self.write_manifest()
        for extra in sorted(self.path.glob("shard-*.safetensors")):
            if extra.name not in {shard_name(i) for i in range(len(self.plan))}:
                extra.unlink()  # beyond a smaller plan: no longer listed, so no longer part of the data

    def manifest(self) -> dict:
        """The manifest describing the shards written so far."""
        return {
            "format": FORMAT, **self.identity, "episodes": self.episodes, "shard_episodes": self.shard_episodes,
            "complete": len(self.shards) == len(self.plan), "totals": totals(self.shards), "shards": self.shards,
        }

    def write_manifest(self) -> None:
        """Replace manifest.json atomically."""
        write_text_atomic(self.path / MANIFEST, json.dumps(self.manifest(), indent=1) + "\n")

    def write(self, index: int, block: dict[str, torch.Tensor]) -> dict:
        """Write shard `index` (the next pending one) from its block of episodes; return its entry."""
        first, count = self.plan[index]
        if index != len(self.shards):
            raise DemoError(f"shard {index} written out of order (next is {len(self.shards)})")
        check_block(block, first, count, self.spec)
        tensors = shard_tensors(block, self.spec)
        file = self.path / shard_name(index)
        header = {"format": FORMAT, "identity": identity_digest(self.identity), "first_episode": first, "episodes": count}
        tmp = temp_path(file)
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})
        publish(tmp, file)
        entry = {
            "file": file.name, "first_episode": first, "episodes": count, "transitions": len(tensors["actions"]),
            "successes": int(tensors["success"].sum()), "return_sum": float(tensors["returns"].double().sum()),
            "bytes": file.stat().st_size, "sha256": sha256(file),
        }
        self.shards.append(entry)
        self.write_manifest()  # only now is the shard part of the dataset
        return entry


def check_resumable(path: str | Path, identity: dict) -> None:
    """Raise DemoError unless `path` is absent, empty, or a (partial) dataset with this identity."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise DemoError(f"{path} exists and is not a directory")
    if not (path / MANIFEST).exists():
        if any(path.iterdir()):
            raise DemoError(f"{path} exists and is not a demos dataset (no {MANIFEST}); choose another out= or empty it")
        return
    problem = identity_mismatch(read_manifest(path), identity)
    if problem:
        raise DemoError(f"{path} holds demos of another config ({problem}); choose another out= or delete it")


# ------------------------------------------------------------------------------ reading
def read_shard(path: Path, entry: dict, manifest: dict, spec: dict) -> dict[str, torch.Tensor]:
    """The tensors of one intact shard, checked against its manifest entry and the spec."""
    file = path / entry["file"]
    try:
        with safe_open(str(file), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get(HEADER_KEY, "null"))
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise DemoError(f"{file}: unreadable ({str(e).splitlines()[0]})") from None
    expected = {"format": FORMAT, "identity": identity_digest(manifest), "first_episode": entry["first_episode"],
                "episodes": entry["episodes"]}
    if header != expected:
        raise DemoError(f"{file}: its header does not match {MANIFEST} (the manifest was edited, or the shard "
                        "belongs to another dataset)")
    dtypes = {**TRANSITION_DTYPES, **EPISODE_DTYPES, **{f"obs.{k}": dtype for k, (_, dtype) in spec.items()}}
    for key, dtype in dtypes.items():
        if key not in tensors or tensors[key].dtype != dtype:
            raise DemoError(f"{file}: no {key!r} tensor of dtype {str(dtype).removeprefix('torch.')}")
    for key, (shape, _) in spec.items():
        if tuple(tensors[f"obs.{key}"].shape[1:]) != tuple(shape):
            raise DemoError(f"{file}: obs.{key} has shape {tuple(tensors[f'obs.{key}'].shape[1:])}, {tuple(shape)} expected")
    if len(tensors["lengths"]) != entry["episodes"] or int(tensors["lengths"].sum()) != entry["transitions"] \
            or any(len(tensors[k]) != entry["transitions"] for k in dtypes if k not in EPISODE_DTYPES):
        raise DemoError(f"{file}: its episode and step counts do not match {MANIFEST}")
    return tensors


def kept_episodes(manifest: dict, fraction: float) -> int:
    """How many episodes `fraction` of a dataset keeps: its first ones, at least one."""
    return max(1, math.floor(fraction * manifest["totals"]["episodes"] + 1e-9))


def kept_transitions(path: Path, manifest: dict, episodes: int) -> int:
    """The transitions of the first `episodes` episodes (reads only the lengths of a partial shard)."""
    count = 0
    for entry in manifest["shards"]:
        if entry["first_episode"] + entry["episodes"] <= episodes:
            count += entry["transitions"]
        elif entry["first_episode"] < episodes:
            try:
                with safe_open(str(path / entry["file"]), framework="pt") as f:
                    lengths = f.get_tensor("lengths")
            except (SafetensorError, OSError, ValueError) as e:
                raise DemoError(f"{path / entry['file']}: unreadable ({str(e).splitlines()[0]})") from None
            count += int(lengths[: episodes - entry["first_episode"]].sum())
    return count


def check_trainable(path: str | Path, fraction: float, batch_size: int, data_cfg, observation_spec: dict,
                    actions) -> None:
    """Raise DemoError unless a run on `data_cfg` can train from `fraction` of the dataset at
    `path` in minibatches of `batch_size`: a complete dataset whose shards are all present at
    their recorded sizes (their checksums are verified when the run loads them), recorded on
    the same env, with at least one minibatch of transitions. Reads no observations."""
    path = Path(path)
    manifest = read_manifest(path)
    check_complete(manifest, path)
    for entry in manifest["shards"]:
        file = path / entry["file"]
        if not file.is_file():
            raise DemoError(f"{path}: {entry['file']} is missing")
        if file.stat().st_size != entry["bytes"]:
            raise DemoError(f"{path}: {entry['file']} is truncated or changed ({file.stat().st_size} bytes, "
                            f"{entry['bytes']} expected)")
    check_compatible(manifest, data_cfg, observation_spec, actions)
    episodes = kept_episodes(manifest, fraction)
    transitions = kept_transitions(path, manifest, episodes)
    if transitions < batch_size:
        kept = f"{episodes} episode{'s' if episodes != 1 else ''}"
        raise DemoError(f"{path}: the {kept} used hold {transitions} transitions, fewer than one minibatch "
                        f"(algo.batch_size={batch_size}); record more (mmrl demos episodes=...) or lower algo.batch_size")


def check_complete(manifest: dict, path: Path) -> None:
    """Refuse a dataset whose generation has not finished, or whose manifest adds up wrongly."""
    m = manifest
    written = sum(s["episodes"] for s in m["shards"])
    if not m["complete"] or written != m["episodes"]:
        raise DemoError(f"{path}: incomplete ({written} of {m['episodes']} episodes written); run the same "
                        "mmrl demos command again to finish it")
    if m["shards"] and m["totals"] != totals(m["shards"]):
        raise DemoError(f"{path}: the totals in {MANIFEST} do not add up (the manifest was edited)")
    plan = shard_plan(m["episodes"], m["shard_episodes"])
    if [(s["first_episode"], s["episodes"]) for s in m["shards"]] != plan or \
            [s["file"] for s in m["shards"]] != [shard_name(i) for i in range(len(plan))]:
        raise DemoError(f"{path}: the shards listed in {MANIFEST} do not follow its plan (the manifest was edited)")


class DemoDataset:
    """A verified demonstration dataset in memory, with shuffled minibatches that resume exactly.

    `fraction` keeps the first fraction of the episodes (at least one). Minibatches are drawn
    without replacement from a fresh permutation each epoch (the few transitions that do not
    fill a last minibatch wait for a later epoch), by a generator of the dataset's own seeded
    with `seed`: `state_dict` / `load_state_dict` continue exactly where a run stopped.
    """

    def __init__(self, path: str | Path, fraction: float = 1.0, seed: int = 0, device: str | torch.device = "cpu"):
        self.path = Path(path)
        if not 0.0 < fraction <= 1.0:
            raise DemoError(f"fraction: expected a value in (0, 1], got {fraction}")
        self.manifest = manifest = read_manifest(self.path)
        check_complete(manifest, self.path)
        self.observation_spec = spec_from_json(manifest["observation_spec"])
        self.num_actions = int(manifest["num_actions"])
        self.num_episodes = kept_episodes(manifest, fraction)
        for entry in manifest["shards"]:  # every shard, also those `fraction` leaves out: refuse damage early
            problem = shard_problem(self.path, entry)
            if problem:
                raise DemoError(f"{self.path}: {problem}")
        self.load(torch.device(device))
        self.generator = torch.Generator()
        self.generator.manual_seed(seed)
        self.epoch_start_state = self.generator.get_state()  # the state the current permutation was drawn from
        self.epochs, self.cursor, self.order = 0, 0, None

    def load(self, device: torch.device) -> None:
        """Read the shards that hold the first `num_episodes` episodes into tensors on `device`."""
        parts = []
        for entry in self.manifest["shards"]:
            if entry["first_episode"] >= self.num_episodes:
                break
            parts.append(read_shard(self.path, entry, self.manifest, self.observation_spec))
        data = concat_blocks(parts)
        lengths = data["lengths"][: self.num_episodes]
        steps = int(lengths.sum())
        self.obs = {k[4:]: v[:steps].to(device) for k, v in data.items() if k.startswith("obs.")}
        for key in TRANSITION_DTYPES:
            setattr(self, key, data[key][:steps].to(device))
        for key in EPISODE_DTYPES:
            setattr(self, key, data[key][: self.num_episodes].to(device))

    def __len__(self) -> int:
        """Number of transitions (of the kept episodes)."""
        return len(self.actions)

    @property
    def success_rate(self) -> float:
        """The expert's success rate over the kept episodes."""
        return float(self.success.float().mean())

    def check_compatible(self, data_cfg, observation_spec: dict, num_actions: int) -> None:
        """Raise DemoError unless this dataset fits a run on `data_cfg` (see `check_compatible`)."""
        check_compatible(self.manifest, data_cfg, observation_spec, num_actions)

    def batch(self, index: torch.Tensor) -> dict:
        """The transitions at `index`: {"obs": {key: tensor}, "actions", "rewards", "dones", "truncated", "episode_ids"}."""
        index = index.to(self.actions.device)
        out = {"obs": {k: v.index_select(0, index) for k, v in self.obs.items()}}
        out.update({k: getattr(self, k).index_select(0, index) for k in TRANSITION_DTYPES})
        return out

    def new_epoch(self) -> None:
        """Draw the next permutation of the transitions."""
        self.epoch_start_state = self.generator.get_state()
        self.order = torch.randperm(len(self), generator=self.generator)
        self.epochs += 1
        self.cursor = 0

    def next_batch(self, batch_size: int) -> dict:
        """The next shuffled minibatch of `batch_size` transitions (all of them if there are fewer)."""
        size = min(batch_size, len(self))
        if self.order is None or self.cursor + size > len(self):
            self.new_epoch()
        index = self.order[self.cursor : self.cursor + size]
        self.cursor += size
        self.last_index = index  # which transitions the batch holds (per-transition targets computed elsewhere)
        return self.batch(index)

    def epoch(self, batch_size: int) -> Iterator[dict]:
        """The remaining minibatches of the current epoch (of a new one if the current is used up)."""
        size = min(batch_size, len(self))
        if self.order is None or self.cursor + size > len(self):
            self.new_epoch()
        while self.cursor + size <= len(self):
            yield self.next_batch(size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Where the minibatch stream stands, as tensors (a checkpoint stores them as they are)."""
        return {"generator": self.epoch_start_state.clone(),
                "position": torch.tensor([self.epochs, self.cursor, len(self)], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue the minibatch stream from a `state_dict` (of a dataset of the same size)."""
        epochs, cursor, size = (int(x) for x in state["position"])
        if size != len(self):
            raise DemoError(f"{self.path}: the saved minibatch state is of {size} transitions, this dataset has {len(self)}")
        load_generator_state(self.generator, state["generator"])
        self.epochs, self.order, self.cursor = 0, None, 0
        if epochs:  # redraw the current permutation from the state it was drawn from
            self.new_epoch()
            self.epochs, self.cursor = epochs, cursor
