"""Any gymnasium env id as a batched torch env, through gymnasium's vector API.

What an observation becomes (decided once per observation space, see `ObservationLayout`):

- ``image``: RGB pixels, uint8 (H, W, C); policies scale them to [0, 1].
- ``grid``: a *symbolic* image, uint8 (H, W, C) of category indices (MiniGrid/BabyAI's
  object, colour and state ids); policies embed each channel's index (or read it raw:
  ``model.grid_embed=0``), never divide by 255.
  MiniGrid envs are symbolic when their image is the agent's view or the whole grid (RGB
  wrappers such as ``RGBImgPartialObsWrapper`` make them pixels again); any other integer
  image whose dtype is not uint8 is symbolic; ``data.image=pixels|symbolic`` overrides.
- ``mission``: a text instruction as token ids (the model's tokenizer, `mmrl_cli.text`; each
  distinct mission tokenised once). A
  MiniGrid mission that can only ever be one string (DoorKey, Empty: no placeholders) carries
  no information and is left out unless ``data.constant_mission=keep``: as a learned constant
  input it acted as an extra, fast-drifting bias that destabilised PPO (docs/benchmarks.md).
- ``vector``: everything else, concatenated as floats: Box vectors (flattened), Discrete
  values one-hot (MiniGrid's ``direction``), MultiBinary as 0/1. No Dict key is dropped.

Float images are refused with one line (wrap the env to give uint8 pixels). Actions must be
Discrete.

Episode ends: sub-environments auto-reset in the same step (gymnasium's SAME_STEP mode); the
last observation of a finished episode comes back in ``info["final_obs"]``. A step that is
both terminated and truncated is an episode end (the collector never bootstraps it).

Success: what the env says when it says it (an ``is_success`` or ``success`` flag in the
final step's info); otherwise the documented rule of the env's family (`SUCCESS_RULES`:
MiniGrid/BabyAI: the mission was completed, i.e. terminated with a positive reward, as those
envs reward only completion; CartPole: balanced until the time limit; MountainCar/Acrobot:
reached the goal); otherwise undefined, and no success rate is reported (return is the
headline).
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import gymnasium as gym
from gymnasium.vector import AutoresetMode

from ..distributions import ActionSpace
from ..text import WordTokenizer
from .gym_levels import LevelPicker, PickedResets, TaskSwitch

SUCCESS_INFO_KEYS = ("is_success", "success")  # SB3's / gymnasium-robotics' flag, and a plain one


class UnsupportedEnvError(ValueError):
    """The gymnasium env's spaces are not ones mmrl can feed to a policy."""


class _Discard(io.TextIOBase):
    """A text stream that drops what is written to it (no system call per write)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)


@contextlib.contextmanager
def quiet_stdout():
    """Drop what is printed to stdout inside the block (third-party env code that reports on
    stdout, e.g. BabyAI's "Sampling rejected: ..." for every rejected level draw, thousands of
    lines that would scroll the live view away). Warnings and errors go to stderr and stay."""
    saved, sys.stdout = sys.stdout, _Discard()
    try:
        yield
    finally:
        sys.stdout = saved


class QuietStdout(gym.Wrapper):
    """Runs the wrapped env's reset and step under `quiet_stdout`; applied to every sub-env,
    also inside async vectorisation's worker processes."""

    def reset(self, **kwargs):
        with quiet_stdout():
            return self.env.reset(**kwargs)

    def step(self, action):
        with quiet_stdout():
            return self.env.step(action)


def make_quiet(env_id: str, **kwargs) -> gym.Env:
    """`gym.make`, with the env's own prints to stdout dropped (also while it is made)."""
    with quiet_stdout():
        return QuietStdout(gym.make(env_id, **kwargs))


def import_env_packages() -> None:
    """Register optional env families (MiniGrid/BabyAI) if they are installed."""
    try:
        import minigrid  # noqa: F401
    except ImportError:
        pass


def is_minigrid(env: gym.Env) -> bool:
    """True for MiniGrid/BabyAI envs (their image is symbolic, their reward means success)."""
    try:
        from minigrid.minigrid_env import MiniGridEnv
    except ImportError:
        return False
    return isinstance(env.unwrapped, MiniGridEnv)


def minigrid_symbolic_shapes(env: gym.Env) -> set[tuple[int, int, int]]:
    """Image shapes of a MiniGrid env that are symbolic: its partial view and its whole grid."""
    inner = env.unwrapped
    view = inner.agent_view_size
    return {(view, view, 3), (inner.width, inner.height, 3), (inner.height, inner.width, 3)}


def fixed_mission(space: gym.Space) -> str | None:
    """The one string a MiniGrid mission space admits, or None where missions vary.

    A ``MissionSpace`` without placeholders contains exactly ``mission_func()``; subclasses that
    accept other strings (BabyAI's) and gymnasium's ``Text`` are never constant here.
    """
    try:
        from minigrid.core.mission import MissionSpace
    except ImportError:
        return None
    if type(space).contains is not MissionSpace.contains or space.ordered_placeholders is not None:
        return None
    return space.mission_func()


def _is_text(space: gym.Space) -> bool:
    """A text space: gymnasium's Text, or MiniGrid's MissionSpace (and BabyAI's subclass of it)."""
    return isinstance(space, gym.spaces.Text) or any(cls.__name__ == "MissionSpace" for cls in type(space).__mro__)


@dataclass
class ObservationLayout:
    """How one gymnasium observation space maps to mmrl's observation keys.

    `image_key` is the Dict key (or None for a bare Box) of the image and `image_as` is
    "image" (pixels) or "grid" (symbolic); `vector_parts` lists (key, space) pairs that make
    up the float vector, in order.
    """

    image_key: str | None = None
    image_as: str | None = None
    image_shape: tuple[int, ...] | None = None
    mission_key: str | None = None
    dropped_mission: str | None = None  # the constant mission left out (see `fixed_mission`)
    vector_parts: list[tuple[str | None, gym.Space]] = field(default_factory=list)
    vector_size: int = 0

    @property
    def has_text(self) -> bool:
        """Whether the env's observation has a text part (fed or dropped)."""
        return self.mission_key is not None or self.dropped_mission is not None

    @property
    def keys(self) -> set[str]:
        """The observation keys a policy receives."""
        keys = {self.image_as} if self.image_as else set()
        keys |= {"mission"} if self.mission_key else set()
        return keys | ({"vector"} if self.vector_size else set())


def _vector_width(space: gym.Space, name: str) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, (gym.spaces.Box, gym.spaces.MultiBinary)):
        if isinstance(space, gym.spaces.Box) and not np.issubdtype(space.dtype, np.number):
            raise UnsupportedEnvError(f"observation {name!r}: non-numeric Box {space}")
        return int(np.prod(space.shape))
    raise UnsupportedEnvError(f"observation {name!r}: unsupported space {space} (mmrl takes Box, Discrete, "
                              "MultiBinary, Text, and Dicts of them)")


def describe_observations(env: gym.Env, image_kind: str = "auto", constant_mission: str = "drop") -> ObservationLayout:
    """Decide what each part of `env`'s observation space is (see the module docstring);
    `constant_mission` ("drop" or "keep") says what to do with a mission that never changes."""
    space = env.observation_space
    layout = ObservationLayout()
    items = list(space.spaces.items()) if isinstance(space, gym.spaces.Dict) else [(None, space)]
    for key, sub in items:
        name = key or "observation"
        if _is_text(sub):
            fixed = fixed_mission(sub) if constant_mission == "drop" else None
            if fixed is not None:
                layout.dropped_mission = fixed
                continue
            if layout.mission_key is not None:
                raise UnsupportedEnvError(f"observation {name!r}: a second text observation ({layout.mission_key!r} is the first)")
            layout.mission_key = key
        elif isinstance(sub, gym.spaces.Box) and len(sub.shape) == 3 and layout.image_as is None:
            layout.image_key, layout.image_shape = key, tuple(sub.shape)
            layout.image_as = _image_kind(env, sub, image_kind, name)
        else:
            layout.vector_parts.append((key, sub))
            layout.vector_size += _vector_width(sub, name)
    if image_kind != "auto" and layout.image_as is None:
        raise UnsupportedEnvError(f"data.image={image_kind} but the env has no (H, W, C) image observation")
    return layout


def _image_kind(env: gym.Env, space: gym.spaces.Box, image_kind: str, name: str) -> str:
    """"image" (RGB pixels) or "grid" (symbolic categories) for a 3-D Box observation."""
    if np.issubdtype(space.dtype, np.floating):
        raise UnsupportedEnvError(f"observation {name!r}: float images ({space}) are not supported; wrap the env to "
                                  "give uint8 pixels (or integer category ids)")
    if np.issubdtype(space.dtype, np.integer) and space.dtype != np.uint8 and (space.low.min() < 0 or space.high.max() > 255):
        raise UnsupportedEnvError(f"observation {name!r}: integer images must lie in [0, 255], got {space}")
    if image_kind == "pixels":
        return "image"
    if image_kind == "symbolic":
        return "grid"
    if is_minigrid(env) and tuple(space.shape) in minigrid_symbolic_shapes(env):
        return "grid"
    return "image" if space.dtype == np.uint8 else "grid"


class GymObservations:
    """Turns batched gymnasium observations of one layout into mmrl's torch observation dict."""

    def __init__(self, layout: ObservationLayout, mission_tokens: int, device: torch.device, tokenizer=None):
        self.layout, self.device = layout, torch.device(device)
        self.spec: dict = {}
        if layout.image_as:
            self.spec[layout.image_as] = (layout.image_shape, torch.uint8)
        self.mission_tokens = mission_tokens
        self.tokenizer = (tokenizer or WordTokenizer()) if layout.mission_key else None
        self.mission_cache: dict[str, np.ndarray] = {}  # an env has few distinct missions: tokenize each once
        if self.tokenizer is not None:
            self.spec["mission"] = ((mission_tokens,), torch.int64)
        if layout.vector_size:
            self.spec["vector"] = ((layout.vector_size,), torch.float32)
        self.one_hot_tables: dict[int, np.ndarray] = {}

    def _part(self, obs, key):
        return obs if key is None else obs[key]

    def _tokens(self, missions) -> torch.Tensor:
        cache = self.mission_cache
        rows = []
        for text in missions:
            ids = cache.get(text)
            if ids is None:
                ids = cache[text] = np.asarray(self.tokenizer.encode(text, self.mission_tokens), dtype=np.int64)
            rows.append(ids)
        return torch.from_numpy(np.stack(rows))

    def _one_hot(self, space: gym.spaces.Discrete) -> np.ndarray:
        table = self.one_hot_tables.get(int(space.n))
        if table is None:
            table = self.one_hot_tables[int(space.n)] = np.eye(int(space.n), dtype=np.float32)
        return table

    def _vector(self, obs, batch: int) -> np.ndarray:
        parts = []
        for key, space in self.layout.vector_parts:
            value = np.asarray(self._part(obs, key))
            if isinstance(space, gym.spaces.Discrete):
                parts.append(self._one_hot(space)[value.reshape(batch) - space.start])
            else:
                parts.append(value.reshape(batch, -1).astype(np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def to_torch(self, obs, batch: int) -> dict[str, torch.Tensor]:
        """Convert a batch of `batch` gymnasium observations (copies: gymnasium reuses its buffers)."""
        layout, out = self.layout, {}
        if layout.image_as:
            image = np.asarray(self._part(obs, layout.image_key))
            out[layout.image_as] = torch.from_numpy(image.astype(np.uint8, copy=True)).to(self.device)
        if self.tokenizer is not None:
            out["mission"] = self._tokens(self._part(obs, layout.mission_key)).to(self.device)
        if layout.vector_size:
            out["vector"] = torch.from_numpy(self._vector(obs, batch)).to(self.device)
        return out

    def stack(self, observations: list) -> dict | np.ndarray:
        """Batch single-env observations (e.g. the final observations of finished episodes)."""
        if isinstance(observations[0], dict):
            return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
        return np.stack(observations)

    def single_to_torch(self, obs) -> dict[str, torch.Tensor]:
        """Convert the observation of one (unbatched) env, as a batch of one."""
        return self.to_torch(self.stack([obs]), 1)


# Success of finished episodes from (terminated, truncated, reward), per env family (the
# gymnasium id's name, or "MiniGrid" for every MiniGrid/BabyAI env).
SUCCESS_RULES = {
    "MiniGrid": lambda terminated, truncated, reward: terminated & (reward > 0),  # mission completed
    "CartPole": lambda terminated, truncated, reward: truncated & ~terminated,   # balanced until the time limit
    "MountainCar": lambda terminated, truncated, reward: terminated,             # reached the flag
    "Acrobot": lambda terminated, truncated, reward: terminated,                 # swung above the line
}


def env_family(env: gym.Env) -> str | None:
    """The key of `SUCCESS_RULES` that applies to `env`, if any."""
    if is_minigrid(env):
        return "MiniGrid"
    if env.spec is None:
        return None
    _, name, _ = gym.envs.registration.parse_env_id(env.spec.id)
    return name if name in SUCCESS_RULES else None


def info_flag_success(final_info: dict, index: np.ndarray) -> np.ndarray | None:
    """The env's own success flag of the episodes in `index`, if the env reports one for all of them."""
    for key in SUCCESS_INFO_KEYS:
        if key in final_info:
            present = final_info.get(f"_{key}", np.ones(len(final_info[key]), dtype=bool))
            if bool(np.all(present[index])):
                return np.asarray(final_info[key])[index].astype(bool)
    return None


def action_space_of(space, env_id: str, squash: str = "clip") -> ActionSpace:
    """mmrl's `ActionSpace` for a gymnasium action space: Discrete, or a Box with finite bounds
    (`squash`: how Gaussian samples are brought inside them, clip or tanh)."""
    if isinstance(space, gym.spaces.Discrete):
        return ActionSpace.discrete(int(space.n))
    if isinstance(space, gym.spaces.Box):
        try:
            return ActionSpace.box(space.shape, space.low, space.high, squash)
        except ValueError as e:
            raise UnsupportedEnvError(f"{env_id}: {e}") from None
    raise UnsupportedEnvError(f"{env_id}: mmrl needs a Discrete or Box action space, got {space}")


class GymVectorEnv:
    """A gymnasium vector env presented as batched torch tensors."""

    bootstrap_time_limit = True  # gymnasium's truncation means "cut by a time limit"

    def __init__(self, env_id: str, num_envs: int, device: torch.device, seed: int = 0,
                 env_kwargs: dict | None = None, mission_tokens: int = 16, vectorization: str = "sync",
                 image_kind: str = "auto", constant_mission: str = "drop", action_squash: str = "clip", tokenizer=None,
                 num_train_levels: int = 0, stage_ids: tuple[str, ...] = ()):
        import_env_packages()
        self.env_id, self.device, self.seed = env_id, torch.device(device), seed
        probe = make_quiet(env_id, **(env_kwargs or {}))
        try:
            layout = describe_observations(probe, image_kind, constant_mission)
            self.success_rule = SUCCESS_RULES.get(env_family(probe))
            actions = probe.action_space
        finally:
            probe.close()
        vector_kwargs = {"autoreset_mode": AutoresetMode.SAME_STEP, "copy": False}
        if vectorization == "async" and layout.has_text:
            vector_kwargs["shared_memory"] = False  # text (MiniGrid's MissionSpace) has no shared-memory form
        # Training on chosen levels (a finite seed set, a level sampler, a curriculum of env ids): every
        # sub-environment asks a shared picker at each reset (envs/gym_levels.py).
        self.picker = LevelPicker(num_envs, num_train_levels, seed) if num_train_levels or stage_ids else None
        self.stage_ids = tuple(stage_ids) or (env_id,)
        self.level_control = None  # a level sampler's and curriculum's state, saved by the collector
        self.step_fields = ("level_id",) if num_train_levels else ()
        with quiet_stdout():
            if self.picker is None:
                self.vec = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization,
                                        vector_kwargs=vector_kwargs, wrappers=[QuietStdout], **(env_kwargs or {}))
            else:
                self.vec = gym.vector.SyncVectorEnv([self.picked_env(i, env_kwargs or {}) for i in range(num_envs)],
                                                    **vector_kwargs)
        self.num_envs = num_envs
        self.action_spec = action_space_of(actions, env_id, action_squash)
        self.num_actions = self.action_spec.n  # 0 for box actions
        self.action_start = int(actions.start) if isinstance(actions, gym.spaces.Discrete) else 0
        self.observations = GymObservations(layout, mission_tokens, self.device, tokenizer)
        self.tokenizer = self.observations.tokenizer
        self.observation_spec = self.observations.spec
        self.episode_return = np.zeros(num_envs, dtype=np.float64)
        self.episode_length = np.zeros(num_envs, dtype=np.int64)

    def picked_env(self, index: int, env_kwargs: dict):
        """A maker of sub-environment `index` that plays the picker's levels and tasks."""
        def make() -> gym.Env:
            envs = [make_quiet(env_id, **env_kwargs) for env_id in self.stage_ids]
            return PickedResets(envs[0] if len(envs) == 1 else TaskSwitch(envs, self.picker), self.picker, index)
        return make

    @property
    def level_id(self) -> torch.Tensor:
        """The training level (reset seed) each sub-environment plays now (-1: not a chosen level)."""
        return self.picker.level_id

    @property
    def level_sampler(self):
        """The sampler that picks each reset's training level (None: uniform)."""
        return self.picker.sampler if self.picker is not None else None

    @level_sampler.setter
    def level_sampler(self, sampler) -> None:
        self.picker.sampler = sampler

    def set_stage(self, stage: dict) -> None:
        """Play the curriculum stage `stage` (its ``env_id``) from each sub-environment's next reset on."""
        self.picker.task = self.stage_ids.index(stage["env_id"])

    def to_torch(self, obs) -> dict[str, torch.Tensor]:
        """Convert a (batched) gymnasium observation to the torch observation dict."""
        return self.observations.to_torch(obs, self.num_envs)

    def reset(self, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Reset every sub-environment (seeded with seed, seed + 1, ...)."""
        obs, _ = self.vec.reset(seed=self.seed if seed is None else seed)
        self.episode_return[:] = 0
        self.episode_length[:] = 0
        return self.to_torch(obs)

    def success(self, terminated: np.ndarray, truncated: np.ndarray, reward: np.ndarray, info: dict,
                index: np.ndarray) -> np.ndarray | None:
        """Success of the episodes that ended at `index`, or None where the env does not define it."""
        flags = info_flag_success(info.get("final_info", {}), index)
        if flags is not None:
            return flags
        if self.success_rule is None:
            return None
        return self.success_rule(terminated[index], truncated[index], reward[index])

    def step(self, actions: torch.Tensor):
        """Step all sub-environments; same return convention as the built-in env."""
        actions = actions.cpu().numpy()
        obs, reward, terminated, truncated, info = self.vec.step(actions + self.action_start if self.action_start else actions)
        self.episode_return += reward
        self.episode_length += 1
        done_index = np.flatnonzero(terminated | truncated)
        out = {"done_index": torch.as_tensor(done_index, device=self.device)}
        if len(done_index):
            out["episode_return"] = torch.as_tensor(self.episode_return[done_index], dtype=torch.float32, device=self.device)
            out["episode_length"] = torch.as_tensor(self.episode_length[done_index], device=self.device)
            success = self.success(terminated, truncated, reward, info, done_index)
            if success is not None:
                out["success"] = torch.as_tensor(success, device=self.device)
            finals = self.observations.stack([info["final_obs"][i] for i in done_index])
            out["final_obs"] = self.observations.to_torch(finals, len(done_index))
            self.episode_return[done_index] = 0
            self.episode_length[done_index] = 0
        to = lambda x, dt: torch.as_tensor(x, dtype=dt, device=self.device)  # noqa: E731
        return self.to_torch(obs), to(reward, torch.float32), to(terminated, torch.bool), to(truncated, torch.bool), out

    def close(self) -> None:
        self.vec.close()
