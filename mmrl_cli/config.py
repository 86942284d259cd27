"""Structured schemas for every config group, and validation with one-line errors.

Hydra composes plain YAML from `conf/`; `validate` then checks it against these dataclasses
(unknown keys, wrong types, out-of-range values) and returns typed objects, so the hot loops
read plain Python values, never the DictConfig. Each group option picks its schema with its
`type` key through the plain dict `GROUP_SCHEMAS`.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from .errors import ConfigError  # re-exported: every config check raises it

# A checkpoint's directory name: its update number, zero-padded (so names sort by age).
CHECKPOINT_NAME = re.compile(r"^[0-9]{8}$")
# Schedules of a hyperparameter over training: constant, or annealed linearly to 0 at the end.
SCHEDULES = ("constant", "linear")
# Level splits: training levels, validation levels (periodic evaluations pick on these) and
# held-out levels (the final report only). Disjoint by level content; see envs/goto.py. The
# built-in task adds new-wordings: held-out levels with held-out paraphrases (envs/wordings.py).
SPLITS = ("train", "validation", "heldout", "new-wordings")
# Seeds: NumPy takes [0, 2**32); mmrl adds offsets (validation/held-out ranges, env index) to the
# seed, so seeds stay at or below 2**31 - 1 and every derived seed stays valid.
SEED_MAX = 2**31 - 1
# torch.compile's modes (reduce-overhead and max-autotune capture CUDA graphs on a GPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# --------------------------------------------------------------------------------- algo
# Settings every algorithm shares (steps, envs, rollout length) live in `TrainConfig` and
# `RolloutConfig`; an algorithm's section holds only what its losses and optimiser read.
# Value losses are the mean squared error to the returns, as Stable-Baselines3 writes them, so
# SB3/rl-zoo3 values of `vf_coef` carry over unchanged.
@dataclass
class PPOConfig:
    type: str = "ppo"
    n_epochs: int = 4
    batch_size: int = 512
    lr: float = 1e-3
    lr_schedule: str = "linear"
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_schedule: str = "constant"
    clip_value: Optional[float] = None
    ent_coef: float = 0.01
    vf_coef: float = 0.25
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = None
    normalize_advantages: bool = True
    adam_eps: float = 1e-5

    def check(self) -> None:
        positive("algo", self, "n_epochs", "batch_size", "lr", "adam_eps")
        between("algo", self, "n_epochs", 1, 1000)  # passes over each rollout; more is a typo that would hang
        between("algo", self, "gamma", 0.0, 1.0)
        between("algo", self, "gae_lambda", 0.0, 1.0)
        positive("algo", self, "clip_range", "max_grad_norm")
        non_negative("algo", self, "ent_coef", "vf_coef")
        one_of("algo", self, "lr_schedule", SCHEDULES)
        one_of("algo", self, "clip_schedule", SCHEDULES)
        if self.clip_value is not None:
            positive("algo", self, "clip_value")
        if self.target_kl is not None:
            positive("algo", self, "target_kl")


@dataclass
class A2CConfig:
    type: str = "a2c"
    lr: float = 7e-4
    lr_schedule: str = "constant"
    lr_warmup: float = 0.0
    gamma: float = 0.99
    gae_lambda: float = 1.0
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    normalize_advantages: bool = False
    optimizer: str = "rmsprop"
    rmsprop_alpha: float = 0.99
    eps: float = 1e-5

    def check(self) -> None:
        positive("algo", self, "lr", "max_grad_norm", "eps")
        between("algo", self, "gamma", 0.0, 1.0)
        between("algo", self, "gae_lambda", 0.0, 1.0)
        between("algo", self, "rmsprop_alpha", 0.0, 1.0)
        between("algo", self, "lr_warmup", 0.0, 0.5)
        non_negative("algo", self, "ent_coef", "vf_coef")
        one_of("algo", self, "lr_schedule", SCHEDULES)
        one_of("algo", self, "optimizer", ("rmsprop", "adam"))


# A3C's worker processes: at most this many per CPU core, and never more than this in all.
A3C_WORKERS_PER_CORE = 4
A3C_WORKERS_MAX = 256


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class A3CConfig(A2CConfig):
    """Asynchronous advantage actor-critic (Hogwild workers, a shared model); see algos/a3c.py.

    A2C's loss and optimiser settings, plus the worker processes. ``rollout.n_envs`` is per
    worker (as it is per rank under hardware=ddp); one worker update is ``rollout.n_envs *
    rollout.n_steps`` env steps.
    """

    type: str = "a3c"
    ent_coef: float = 0.01        # Mnih et al. 2016 (A2C's SB3 default is 0)
    workers: Optional[int] = None  # worker processes; None: one per available core
    reports_per_step: int = 8      # worker updates gathered into one train step of the coordinator
    max_restarts: int = 10         # workers killed by a signal are restarted this many times in all

    def check(self) -> None:
        super().check()
        if self.workers is not None:
            limit = min(A3C_WORKERS_PER_CORE * available_cores(), A3C_WORKERS_MAX)
            between("algo", self, "workers", 1, limit)
        between("algo", self, "reports_per_step", 1, 1_000_000)
        between("algo", self, "max_restarts", 0, 1_000_000)

    @property
    def worker_count(self) -> int:
        """The worker processes a run starts: `workers`, or one per available core."""
        return self.workers if self.workers is not None else available_cores()


@dataclass
class BCConfig:
    """Behaviour cloning from a demonstration dataset (`mmrl demos`); see algos/bc.py."""

    type: str = "bc"
    demos: str = MISSING           # the dataset directory `mmrl demos` wrote
    fraction: float = 1.0          # use the first fraction of its episodes
    updates: int = 2000            # gradient steps (the run's length: BC plays no env steps)
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: str = "constant"
    gamma: float = 0.99            # discount of the returns-to-go the critic is fitted to
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    eval_every_updates: int = 500  # validation evaluations every this many gradient steps

    def check(self) -> None:
        positive("algo", self, "updates", "batch_size", "lr", "max_grad_norm", "eval_every_updates")
        between("algo", self, "updates", 1, 10**9)
        between("algo", self, "batch_size", 1, 2**24)
        between("algo", self, "gamma", 0.0, 1.0)
        non_negative("algo", self, "vf_coef", "ent_coef")
        one_of("algo", self, "lr_schedule", SCHEDULES)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"algo.fraction: expected a fraction in (0, 1], got {self.fraction}")


LOW_TRAINING = ("finetune", "freeze")
HIGH_HEADS = ("pointer", "index")  # algo.high_head (models/hierarchical.py)


@dataclass
class HierarchicalConfig(PPOConfig):
    """Hierarchical RL on the sequential task (algos/hierarchical.py, docs/hierarchical.md).

    PPO's keys train the low level (on its own transitions: one per env step, rewarded for reaching
    its sub-goal); the ``high_*`` keys train the high level (on its own transitions: one per option,
    discounted over the option's elapsed steps, an SMDP); ``clip_range``, ``clip_value``,
    ``vf_coef``, ``max_grad_norm``, ``normalize_advantages``, ``adam_eps`` and the schedules serve both.
    """

    type: str = "hierarchical"
    option_steps: int = 16          # the low level's step budget per sub-goal; then the high level chooses again
    high_head: str = "pointer"      # pointer (one shared score per clause: any instruction length) | index (a logit per position)
    high_lr: float = 1e-3
    high_gamma: float = 0.99        # per env step: an option of t steps discounts what follows by high_gamma ** t
    high_gae_lambda: float = 0.95   # over consecutive options of an env
    high_ent_coef: float = 0.01
    high_n_epochs: int = 4
    high_batch_size: int = 256      # options per minibatch (a rollout's options, however many, in minibatches of this size)
    low_init_from: Optional[str] = None  # a trained data=goto run (same model) whose policy starts the low level
    low_train: str = "finetune"     # finetune | freeze: the low level trains with PPO, or acts as loaded

    def check(self) -> None:
        super().check()
        between("algo", self, "option_steps", 1, 10**6)
        positive("algo", self, "high_lr", "high_n_epochs", "high_batch_size")
        between("algo", self, "high_n_epochs", 1, 1000)
        between("algo", self, "high_gamma", 0.0, 1.0)
        between("algo", self, "high_gae_lambda", 0.0, 1.0)
        non_negative("algo", self, "high_ent_coef")
        one_of("algo", self, "low_train", LOW_TRAINING)
        one_of("algo", self, "high_head", HIGH_HEADS)
        if self.low_train == "freeze" and self.low_init_from is None:
            raise ConfigError("algo.low_train: freeze keeps the low level as loaded: give algo.low_init_from=<goto run dir>")

    def level(self, which: str) -> PPOConfig:
        """The PPO settings of one level: ``low`` (PPO's keys) or ``high`` (with the ``high_*`` keys)."""
        settings = {f.name: getattr(self, f.name) for f in fields(PPOConfig)}
        settings["type"] = "ppo"
        if which == "high":
            settings.update(lr=self.high_lr, gamma=self.high_gamma, gae_lambda=self.high_gae_lambda,
                            ent_coef=self.high_ent_coef, n_epochs=self.high_n_epochs, batch_size=self.high_batch_size)
        return PPOConfig(**settings)


@dataclass
class DreamerConfig:
    """Model-based RL with a learned world model (DreamerV3-like); see algos/dreamer.py and docs/dreamer.md.

    A train step plays ``rollout.n_envs x rollout.n_steps`` env steps; `train_ratio` gradient
    updates per env step follow (each: the world model on `batch_size` sequences of `seq_len`
    steps, then the actor and critic on `horizon`-step imagined rollouts). ``model`` is the
    observation encoder (its features); the RSSM and heads are sized here.
    """

    type: str = "dreamer"
    replay_size: int = 100_000        # rows the replay buffer holds (all envs together); checked against memory
    save_replay: bool = True          # save the buffer with checkpoints (exact resume); false: refill on resume
    learning_starts: int = 1_000      # env steps played before the first update
    train_ratio: float = 0.25         # gradient updates per env step (fractions accumulate)
    batch_size: int = 16              # replayed sequences per update
    seq_len: int = 64                 # steps per replayed sequence
    horizon: int = 15                 # imagination horizon (steps)
    lr: float = 3e-4                  # world-model learning rate
    actor_lr: float = 1e-4
    critic_lr: float = 1e-4
    max_grad_norm: float = 100.0      # gradient-norm clip of each of the three optimisers
    gamma: float = 0.99
    lam: float = 0.95                 # lambda of the imagined lambda-returns
    ent_coef: float = 3e-4            # actor entropy bonus (on normalised returns)
    return_decay: float = 0.99        # EMA decay of the return scale (95th - 5th percentile)
    slow_critic_tau: float = 0.02     # slow critic's step towards the critic per update
    slow_critic_reg: float = 1.0      # weight of the critic's loss towards the slow critic's values
    replay_value_coef: float = 0.0    # weight of the critic's loss on replayed real sequences (DreamerV3's repval)
    critic_updates: int = 1           # critic steps per imagination, each re-bootstrapping from the critic it left
    free_bits: float = 1.0            # KL below this many nats is not penalised
    dyn_scale: float = 0.5            # weight of KL(sg(post) || prior)
    rep_scale: float = 0.1            # weight of KL(post || sg(prior))
    deter_size: int = 256             # GRU state
    stoch_size: int = 16              # categorical latent variables
    classes: int = 16                 # classes per latent variable
    hidden_size: int = 256            # width of every MLP of the world model, actor and critic
    unimix: float = 0.01              # uniform mix of the latent categoricals

    def check(self) -> None:
        between("algo", self, "replay_size", 1, 2**31 - 1)
        non_negative("algo", self, "learning_starts")
        positive("algo", self, "train_ratio", "lr", "actor_lr", "critic_lr", "max_grad_norm")
        between("algo", self, "train_ratio", 0.0, 1000.0)  # updates per env step; more is a typo that would hang
        between("algo", self, "batch_size", 1, 2**16)
        between("algo", self, "seq_len", 2, 10_000)
        between("algo", self, "horizon", 1, 1_000)
        between("algo", self, "critic_updates", 1, 100)
        between("algo", self, "gamma", 0.0, 1.0)
        between("algo", self, "lam", 0.0, 1.0)
        non_negative("algo", self, "ent_coef", "free_bits", "dyn_scale", "rep_scale", "slow_critic_reg",
                     "replay_value_coef")
        between("algo", self, "return_decay", 0.0, 1.0)
        between("algo", self, "slow_critic_tau", 0.0, 1.0)
        between("algo", self, "deter_size", 1, 65_536)
        between("algo", self, "stoch_size", 1, 4_096)
        between("algo", self, "classes", 2, 4_096)
        between("algo", self, "hidden_size", 1, 65_536)
        between("algo", self, "unimix", 0.0, 0.5)


# -------------------------------------------------------------------------------- model
# Every model takes `memory` (none | lstm | gru: a recurrent core between its features and its
# actor-critic heads, see docs/memory.md) and `memory_size` (that core's hidden size).
MEMORY_KINDS = ("none", "lstm", "gru")
MEMORY_SIZE_MAX = 65_536


def check_memory(model: Any) -> None:
    """`model.memory` and `model.memory_size`, the same for every model."""
    one_of("model", model, "memory", MEMORY_KINDS)
    between("model", model, "memory_size", 1, MEMORY_SIZE_MAX)


def check_tokenizer(model: Any) -> None:
    """`model.tokenizer`: auto, words or a directory; a pretrained text tower reads its own tokenizer's ids."""
    if not isinstance(model.tokenizer, str) or not model.tokenizer:
        raise ConfigError(f"model.tokenizer: expected auto, words or a local tokenizer directory, got {model.tokenizer!r}")
    tower = getattr(model, "text_pretrained", None) or getattr(model, "pretrained", None)
    if tower and model.tokenizer not in ("auto", tower):
        raise ConfigError(f"model.tokenizer: a pretrained text tower ({tower}) reads the ids of its own tokenizer: "
                          f"leave model.tokenizer=auto, got {model.tokenizer!r}")


@dataclass
class VitGpt2Config:
    type: str = "vit-gpt2"
    hidden_size: int = 48
    vit_layers: int = 1
    gpt_layers: int = 1
    heads: int = 2
    ff_size: int = 96
    head_hidden: int = 256
    head_layers: int = 2
    separate_heads: bool = False
    pos_init_std: float = 1.0
    activation: str = "relu"
    readout: str = "spatial"
    keypoints: int = 16
    grid_embed: int = 8
    memory: str = "none"
    memory_size: int = 128
    tokenizer: str = "auto"
    pretrained: Optional[str] = None
    text_pretrained: Optional[str] = None
    vision_pretrained: Optional[str] = None
    tower_weights: str = "pretrained"
    text_readout: str = "vector"
    name_classes: list[int] = field(default_factory=lambda: [6, 3])
    name_readout: str = "onehot"
    naming_coef: float = 1.0

    def check(self) -> None:
        check_memory(self)
        check_tokenizer(self)
        one_of("model", self, "tower_weights", ("pretrained", "random"))
        one_of("model", self, "text_readout", ("vector", "names"))
        one_of("model", self, "name_readout", ("onehot", "probabilities"))
        if self.text_readout == "names":
            if not (self.text_pretrained or self.pretrained):
                raise ConfigError("model.text_readout: names reads a pretrained text tower's sentence vector: "
                                  "give model.text_pretrained (e.g. minilm) or use model.text_readout=vector")
            if not self.name_classes or not all(isinstance(n, int) and n >= 2 for n in self.name_classes):
                raise ConfigError(f"model.name_classes: expected a list of class counts >= 2, got {list(self.name_classes)}")
            if not math.isfinite(self.naming_coef) or self.naming_coef <= 0:
                raise ConfigError(f"model.naming_coef: expected a finite number > 0, got {self.naming_coef}")
        positive("model", self, "hidden_size", "vit_layers", "gpt_layers", "heads", "ff_size", "head_hidden", "head_layers",
                 "pos_init_std", "keypoints", "grid_embed")
        one_of("model", self, "activation", ("relu", "gelu", "gelu_new"))
        one_of("model", self, "readout", ("spatial", "flatten", "both"))
        if self.hidden_size % self.heads:
            raise ConfigError(f"model.heads: expected a divisor of hidden_size={self.hidden_size}, got {self.heads}")


@dataclass
class CnnConfig:
    type: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    strides: list[int] = field(default_factory=lambda: [1, 2])
    hidden: int = 256
    mission_embed: int = 32
    grid_embed: int = 8
    head_hidden: list[int] = field(default_factory=list)
    memory: str = "none"
    memory_size: int = 128
    tokenizer: str = "auto"

    def check(self) -> None:
        check_memory(self)
        check_tokenizer(self)
        positive("model", self, "kernel_size", "hidden", "mission_embed")
        non_negative("model", self, "grid_embed")
        if not self.channels or min(self.channels) <= 0:
            raise ConfigError(f"model.channels: expected a non-empty list of positive ints, got {self.channels}")
        if self.head_hidden and min(self.head_hidden) <= 0:
            raise ConfigError(f"model.head_hidden: expected a list of positive ints (or []), got {self.head_hidden}")
        if len(self.strides) != len(self.channels) or min(self.strides) <= 0:
            raise ConfigError(f"model.strides: expected one positive stride per conv layer ({len(self.channels)}), "
                              f"got {self.strides}")


@dataclass
class MlpConfig:
    type: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    mission_embed: int = 32
    grid_embed: int = 8
    memory: str = "none"
    memory_size: int = 128
    tokenizer: str = "auto"

    def check(self) -> None:
        check_memory(self)
        check_tokenizer(self)
        positive("model", self, "mission_embed", "grid_embed")
        one_of("model", self, "activation", ("tanh", "relu"))
        if not self.hidden_sizes or min(self.hidden_sizes) <= 0:
            raise ConfigError(f"model.hidden_sizes: expected a non-empty list of positive ints, got {self.hidden_sizes}")


# --------------------------------------------------------------------------------- data
# Level samplers and curricula (mmrl_cli/levels, docs/curriculum.md): the keys are the same for
# the built-in task and gymnasium envs (`LevelSettings`).
LEVEL_SAMPLERS = ("uniform", "plr")
PLR_SCORES = ("value_l1", "positive_value_loss")
REPLAY_SCHEDULES = ("proportionate", "fixed")
CURRICULA = ("none", "success", "schedule")
GOTO_STAGE_KNOBS = ("num_distractors", "num_walls", "max_steps")  # what a built-in curriculum stage may set


@dataclass
class LevelSettings:
    """Which training levels are played: `level_sampler` (uniform | plr, Prioritised Level Replay) over
    `num_train_levels` levels, and a `curriculum` of easier stages before the configured task."""

    num_train_levels: int = 0
    level_sampler: str = "uniform"
    plr_score: str = "value_l1"
    plr_temperature: float = 0.1
    plr_staleness_coef: float = 0.1
    plr_staleness_temperature: float = 1.0
    plr_alpha: float = 1.0
    plr_replay_schedule: str = "proportionate"
    plr_replay_prob: float = 0.5
    curriculum: str = "none"
    curriculum_stages: list[Any] = field(default_factory=list)
    curriculum_threshold: float = 0.8
    curriculum_window: int = 100
    curriculum_stage_steps: int = 100_000
    curriculum_stop: bool = False

    def check_levels(self) -> None:
        """The level sampler's and curriculum's keys (the stages themselves: `check_stage`)."""
        non_negative("data", self, "num_train_levels")
        one_of("data", self, "level_sampler", LEVEL_SAMPLERS)
        one_of("data", self, "plr_score", PLR_SCORES)
        positive("data", self, "plr_temperature", "plr_staleness_temperature")
        between("data", self, "plr_staleness_coef", 0.0, 1.0)
        between("data", self, "plr_replay_prob", 0.0, 1.0)
        one_of("data", self, "plr_replay_schedule", REPLAY_SCHEDULES)
        if not 0.0 < self.plr_alpha <= 1.0:
            raise ConfigError(f"data.plr_alpha: expected a value in (0, 1], got {self.plr_alpha}")
        if self.level_sampler == "plr" and self.num_train_levels == 0:
            raise ConfigError("data.num_train_levels: data.level_sampler=plr replays a finite set of training levels: "
                              "set data.num_train_levels=N (e.g. 200)")
        one_of("data", self, "curriculum", CURRICULA)
        between("data", self, "curriculum_threshold", 0.0, 1.0)
        between("data", self, "curriculum_window", 1, 10**6)
        positive("data", self, "curriculum_stage_steps")
        if self.curriculum != "none" and not self.curriculum_stages:
            raise ConfigError(f"data.curriculum_stages: data.curriculum={self.curriculum} needs at least one easier stage "
                              f"before the configured task")
        if self.curriculum == "none" and self.curriculum_stop:
            raise ConfigError("data.curriculum_stop: there is no curriculum to master (set data.curriculum=success)")


@dataclass
class GotoDataConfig(LevelSettings):
    type: str = "goto"
    grid_size: int = 5
    num_distractors: int = 1
    max_steps: int = 32
    tile_size: int = 8
    num_walls: int = 0
    num_train_levels: int = 0
    min_distractors: Optional[int] = None  # None: every level has num_distractors; N: each level its own count in N..num_distractors
    wordings: str = "fixed"
    sequence_steps: list[int] = field(default_factory=list)  # [] goto; step counts of sequential instructions (envs/goto_seq.py)

    def check(self) -> None:
        self.check_levels()
        for index, stage in enumerate(self.curriculum_stages):
            self.check_stage(index, stage)
        self.check_sequence()
        one_of("data", self, "wordings", ("fixed", "paraphrase", "synonyms"))
        positive("data", self, "grid_size", "max_steps", "tile_size")
        non_negative("data", self, "num_distractors", "num_walls", "num_train_levels")
        if self.grid_size**2 > 2:  # on a grid with room to spare, a count that alone overflows it is that key's fault
            for name in ("num_distractors", "num_walls"):
                between("data", self, name, 0, self.grid_size**2 - 2)
        if 2 + self.num_distractors + self.num_walls > self.grid_size**2:
            raise ConfigError(
                f"data.grid_size: {self.grid_size}x{self.grid_size} has no room for the agent, target, "
                f"{self.num_distractors} distractors and {self.num_walls} walls"
            )
        if self.min_distractors is not None:
            between("data", self, "min_distractors", 0, self.num_distractors)
        fewest = self.num_distractors if self.min_distractors is None else self.min_distractors
        for distractors in sorted({fewest, self.num_distractors}):  # each count's levels are split three ways
            self.check_layouts(distractors)

    def check_layouts(self, distractors: int) -> None:
        """Levels with `distractors` distractors (and the walls) have enough distinct layouts to keep
        training, validation and held-out levels apart."""
        from .envs.goto import MIN_LAYOUTS, count_layouts

        layouts = count_layouts(self.grid_size, distractors, self.num_walls)
        if layouts < MIN_LAYOUTS:
            key = "data.min_distractors" if distractors != self.num_distractors else "data.grid_size"
            raise ConfigError(
                f"{key}: a {self.grid_size}x{self.grid_size} grid with {distractors} distractors "
                f"and {self.num_walls} walls has only {layouts} distinct levels; at least {MIN_LAYOUTS} are needed "
                f"to keep training, validation and held-out levels apart"
            )


    def check_sequence(self) -> None:
        """`sequence_steps` (the sequential task): step counts in [1, 4], each of whose levels fits the grid
        (the agent, every target, the distractors, the walls) with distinct objects for targets and distractors."""
        from .envs.goto import NUM_OBJECT_KINDS
        from .envs.goto_seq import MAX_SEQUENCE_STEPS

        for index, steps in enumerate(self.sequence_steps):
            if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_SEQUENCE_STEPS:
                raise ConfigError(f"data.sequence_steps.{index}: expected a step count in [1, {MAX_SEQUENCE_STEPS}], "
                                  f"got {steps!r}")
        if not self.sequence_steps:
            return
        most = max(self.sequence_steps)
        stages = [("data.sequence_steps", {}), *((f"data.curriculum_stages.{i}", stage)
                                                  for i, stage in enumerate(self.curriculum_stages))]
        for key, stage in stages:  # the task's own settings, and every curriculum stage's
            distractors = stage.get("num_distractors", self.num_distractors)
            walls = stage.get("num_walls", self.num_walls)
            if MAX_SEQUENCE_STEPS + distractors > NUM_OBJECT_KINDS:  # levels draw kinds for the longest instruction
                raise ConfigError(f"{key}: up to {MAX_SEQUENCE_STEPS} steps and {distractors} distractors need "
                                  f"{MAX_SEQUENCE_STEPS + distractors} distinct objects; there are {NUM_OBJECT_KINDS}")
            if 1 + most + distractors + walls > self.grid_size**2:
                raise ConfigError(f"{key}: a {self.grid_size}x{self.grid_size} grid has no room for the agent, "
                                  f"{most} targets, {distractors} distractors and {walls} walls")

    def check_stage(self, index: int, stage: Any) -> None:
        """A built-in curriculum stage: a mapping of difficulty knobs that fits this grid."""
        key = f"data.curriculum_stages.{index}"
        if not isinstance(stage, dict) or not stage:
            raise ConfigError(f"{key}: expected a mapping of {', '.join(GOTO_STAGE_KNOBS)}, got {stage!r}")
        for name, value in stage.items():
            if name not in GOTO_STAGE_KNOBS:
                raise ConfigError(f"{key}.{name}: unknown stage setting (expected one of {', '.join(GOTO_STAGE_KNOBS)}; "
                                  f"the grid size changes the image, so it cannot change between stages)")
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "max_steps" else 0):
                raise ConfigError(f"{key}.{name}: expected an integer >= {1 if name == 'max_steps' else 0}, got {value!r}")
        from .envs.goto import MIN_LAYOUTS, count_layouts

        distractors = stage.get("num_distractors", self.num_distractors)
        walls = stage.get("num_walls", self.num_walls)
        if count_layouts(self.grid_size, distractors, walls) < MIN_LAYOUTS:
            raise ConfigError(f"{key}: a {self.grid_size}x{self.grid_size} grid with {distractors} distractors and {walls} "
                              f"walls has fewer than {MIN_LAYOUTS} distinct levels (or no room for them)")


@dataclass
class CartPoleDataConfig:
    type: str = "cartpole"
    max_steps: int = 500

    def check(self) -> None:
        positive("data", self, "max_steps")


@dataclass
class GymDataConfig(LevelSettings):
    type: str = "gym"
    env_id: str = "CartPole-v1"
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    mission_tokens: int = 16
    vectorization: str = "sync"
    image: str = "auto"
    constant_mission: str = "drop"
    action_squash: str = "clip"  # Box actions: a Gaussian sample is clipped to the bounds, or squashed by tanh

    def check(self) -> None:
        self.check_levels()
        for index, stage in enumerate(self.curriculum_stages):
            if not isinstance(stage, str) or not stage:
                raise ConfigError(f"data.curriculum_stages.{index}: expected a gymnasium env id, got {stage!r}")
        if self.vectorization == "async" and (self.num_train_levels or self.curriculum != "none"):
            raise ConfigError("data.vectorization: training on chosen levels (num_train_levels, level_sampler, "
                              "curriculum) needs vectorization=sync (the sampler is asked in this process)")
        positive("data", self, "mission_tokens")
        one_of("data", self, "vectorization", ("sync", "async"))
        one_of("data", self, "image", ("auto", "pixels", "symbolic"))
        one_of("data", self, "constant_mission", ("drop", "keep"))
        one_of("data", self, "action_squash", ("clip", "tanh"))


# ------------------------------------------------------------------- other groups
@dataclass
class NoCompression:
    type: str = "none"

    def check(self) -> None:
        pass


@dataclass
class KickstartCompression:
    """RL from scratch plus an annealed distillation term towards a teacher (Schmitt et al. 2018)."""

    type: str = "kickstart"
    coef: float = 1.0              # initial weight of the distillation term
    anneal_steps: int = 200_000    # env steps over which the weight falls linearly to 0
    temperature: float = 1.0       # softmax temperature of the teacher's action distribution

    def check(self) -> None:
        positive("compression", self, "coef", "anneal_steps", "temperature")


@dataclass
class DistillCompression:
    """Policy distillation (Rusu et al. 2016) on the student's own states, labelled by the teacher."""

    type: str = "distill"
    student: str = "vit-gpt2-tiny"  # mmrl compress: the model preset of the student when no model=... is given
    temperature: float = 1.0        # softmax temperature of the teacher's action distribution
    value_coef: float = 0.5         # weight of the value-matching term (MSE to the teacher's value)
    lr: float = 2e-3                # Adam learning rate of the student
    epochs: int = 4                 # passes over each rollout
    batch_size: int = 512           # minibatch size
    max_grad_norm: float = 0.5      # gradient clipping
    finetune_steps: int = 0         # mmrl compress: RL fine-tuning steps after distillation (0: none)

    def check(self) -> None:
        positive("compression", self, "temperature", "lr", "epochs", "batch_size", "max_grad_norm")
        non_negative("compression", self, "value_coef", "finetune_steps")


@dataclass
class PruneCompression:
    """Magnitude pruning: unstructured (zeros, stored compactly) or structured (smaller matrices)."""

    type: str = "prune"
    structured: bool = False     # false: zero single weights; true: remove whole units (neurons, heads, channels)
    sparsity: float = 0.9        # unstructured: final fraction of prunable weights that are zero
    scope: str = "global"        # unstructured: global (one magnitude threshold) | layer (each layer to `sparsity`)
    start_fraction: float = 0.0  # unstructured: first pruning step at this fraction of the run
    end_fraction: float = 0.5    # unstructured: final sparsity reached at this fraction of the run (then fine-tuning)
    steps: int = 10              # unstructured: pruning steps on the cubic schedule (Zhu & Gupta 2017)
    amount: float = 0.5          # structured: fraction of units removed from each prunable group

    def check(self) -> None:
        if not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"compression.sparsity: expected a fraction in (0, 1), got {self.sparsity}")
        if not 0.0 < self.amount < 1.0:
            raise ConfigError(f"compression.amount: expected a fraction in (0, 1), got {self.amount}")
        one_of("compression", self, "scope", ("global", "layer"))
        between("compression", self, "start_fraction", 0.0, 1.0)
        between("compression", self, "end_fraction", self.start_fraction, 1.0)
        positive("compression", self, "steps")


@dataclass
class LowRankCompression:
    """SVD factorisation of linear layers (W ~ U V) by a fixed rank or by retained energy."""

    type: str = "lowrank"
    rank: Optional[int] = None  # fixed rank of every factorised layer (null: chosen per layer by `energy`)
    energy: float = 0.9         # keep the smallest rank whose singular values hold this fraction of sum(s^2)
    min_size: int = 4096        # only layers with at least this many weights are factorised

    def check(self) -> None:
        if self.rank is not None:
            positive("compression", self, "rank")
        if not 0.0 < self.energy <= 1.0:
            raise ConfigError(f"compression.energy: expected a fraction in (0, 1], got {self.energy}")
        non_negative("compression", self, "min_size")


@dataclass
class RolloutConfig:
    n_envs: int = 128
    n_steps: int = 16
    bootstrap_truncated: bool = True

    def check(self) -> None:
        positive("rollout", self, "n_envs", "n_steps")


@dataclass
class HardwareConfig:
    device: str = "auto"
    threads: int = 0
    precision: str = "fp32"
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode; reduce-overhead captures CUDA graphs
    fast_path: bool = True
    nproc: int = 1             # processes (ranks) on this machine; > 1: relaunched under torchrun
    nnodes: int = 1            # machines
    node_rank: int = 0         # this machine's index among them
    rdzv_endpoint: str = "localhost:29400"  # host:port of the c10d rendezvous (node 0's address)
    max_restarts: int = 0      # torchrun's elastic restarts after a rank fails
    backend: str = "auto"      # auto (gloo on CPU, NCCL on CUDA) | gloo | nccl

    @property
    def distributed(self) -> bool:
        """True when training runs on several processes."""
        return self.nproc * self.nnodes > 1

    def check(self) -> None:
        between("hardware", self, "threads", 0, 1024)
        one_of("hardware", self, "precision", ("fp32", "bf16"))
        between("hardware", self, "nproc", 1, 1024)
        between("hardware", self, "nnodes", 1, 100_000)
        between("hardware", self, "node_rank", 0, self.nnodes - 1)
        between("hardware", self, "max_restarts", 0, 1000)
        one_of("hardware", self, "backend", ("auto", "gloo", "nccl"))
        one_of("hardware", self, "compile_mode", COMPILE_MODES)
        host, _, port = self.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"hardware.rdzv_endpoint: expected host:port, got {self.rdzv_endpoint!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"hardware.device: expected auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class EvalConfig:
    every_steps: int = 200_000
    episodes: int = 500
    deterministic: bool = True
    stop_at: Optional[float] = None  # stop at the first validation success rate >= this (None: run to total_steps)

    def check(self) -> None:
        positive("eval", self, "every_steps", "episodes")
        if self.stop_at is not None:
            between("eval", self, "stop_at", 0.0, 1.0)


@dataclass
class MonitorConfig:
    progress: bool = True
    tensorboard: bool = True
    log_every_updates: int = 1
    grad_vanish_below: float = 1e-7
    grad_explode_above: float = 1e3

    def check(self) -> None:
        positive("monitor", self, "log_every_updates", "grad_vanish_below", "grad_explode_above")


@dataclass
class CheckpointConfig:
    every_updates: int = 50
    keep_last: int = 3

    def check(self) -> None:
        positive("checkpoint", self, "every_updates", "keep_last")


@dataclass
class NumericsConfig:
    max_skipped_in_a_row: int = 10

    def check(self) -> None:
        positive("numerics", self, "max_skipped_in_a_row")


@dataclass
class FinetuneConfig:
    """Which parameters train and how fast: freezing, LoRA adapters, per-part learning rates (docs/transfer.md)."""

    freeze: list[str] = field(default_factory=list)
    lr_scale: dict[str, float] = field(default_factory=dict)
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["*"])
    lora_train_also: list[str] = field(default_factory=list)
    lora_merge: bool = False

    def check(self) -> None:
        non_negative("finetune", self, "lora_rank", "lora_alpha")
        between("finetune", self, "lora_rank", 0, 4096)
        between("finetune", self, "lora_dropout", 0.0, 0.99)
        for name, scale in self.lr_scale.items():
            if not math.isfinite(scale) or scale <= 0:
                raise ConfigError(f"finetune.lr_scale.{name}: expected a finite multiplier > 0, got {scale}")
        if self.lora_rank and not self.lora_targets:
            raise ConfigError("finetune.lora_targets: expected at least one part or module pattern for the adapters")
        if self.lora_rank:
            import importlib.util

            if importlib.util.find_spec("peft") is None:
                raise ConfigError("finetune.lora_rank: LoRA adapters need peft: pip install 'mmrl[lora]'")


@dataclass
class TrainConfig:
    """The whole config of a training run; its defaults are `mmrl train`'s defaults.

    Build one in Python (``TrainConfig(algo=A2CConfig(), total_steps=10_000)``), or compose
    one from the YAML files with `compose_train_config`; `check()` validates it.
    """

    algo: Any = field(default_factory=PPOConfig)
    model: Any = field(default_factory=VitGpt2Config)
    data: Any = field(default_factory=GotoDataConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    compression: Any = field(default_factory=NoCompression)
    total_steps: int = 400_000
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    numerics: NumericsConfig = field(default_factory=NumericsConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 1
    runs_root: str = "runs"
    run_name: Optional[str] = None
    resume: Optional[str] = None
    teacher: Optional[str] = None    # a trained run whose policy teaches this one (compression=kickstart or distill)
    init_from: Optional[str] = None  # a trained run whose policy weights start this one (fine-tuning, prune, lowrank)

    @property
    def steps_per_update(self) -> int:
        """Transitions collected per update: all envs, one rollout each (A3C: `algo.reports_per_step`
        worker rollouts)."""
        return self.rollout.n_envs * self.rollout.n_steps * getattr(self.algo, "reports_per_step", 1)

    @property
    def total_updates(self) -> int:
        """Updates the run makes (at least one)."""
        return max(1, self.total_steps // self.steps_per_update)

    def check(self) -> None:
        """Validate every section; ConfigError (one line naming the key) on the first problem."""
        for group, options in GROUP_SCHEMAS.items():
            section = getattr(self, group)
            if type(section) not in options.values():
                raise ConfigError(f"{group}: expected a config of type {', '.join(options)}, got {type(section).__name__}")
        positive("", self, "total_steps")
        between("", self, "seed", 0, SEED_MAX)
        for section in (self.algo, self.model, self.data, self.compression, self.hardware, self.rollout, self.eval,
                        self.monitor, self.checkpoint, self.numerics, self.finetune):
            section.check()
        # Per rank, like rollout.n_envs: under hardware=ddp each rank steps on its own minibatch of
        # this size and the gradients are averaged (CleanRL's multi-GPU PPO does the same).
        for section in ("algo", "compression"):  # PPO's minibatch; distillation's (BC's comes from a dataset)
            batch_size = getattr(getattr(self, section), "batch_size", None)
            if getattr(self, section).type in ("bc", "dreamer"):  # BC: a dataset's; Dreamer: replayed sequences
                continue
            if batch_size is not None and batch_size > self.steps_per_update:
                raise ConfigError(f"{section}.batch_size: expected at most rollout.n_envs * rollout.n_steps = "
                                  f"{self.steps_per_update}, got {batch_size}")
        self.check_memory_fits()
        self.check_compression_sources()
        self.check_level_sampling()
        self.check_a3c()
        self.check_hierarchical()
        self.check_dreamer()
        self.check_naming()

    def check_naming(self) -> None:
        """``model.text_readout=names`` learns from the labels the built-in task records beside each step,
        through an extra loss of PPO or A2C (the others learn from no such rollout)."""
        if getattr(self.model, "text_readout", "vector") != "names":
            return
        if self.data.type != "goto" or self.data.sequence_steps:
            raise ConfigError("model.text_readout: names learns from the target labels of the built-in goto task "
                              "(data=goto); use model.text_readout=vector")
        if self.algo.type not in ("ppo", "a2c") or self.compression.type == "distill":
            what = "compression=distill" if self.compression.type == "distill" else f"algo={self.algo.type}"
            raise ConfigError(f"model.text_readout: names trains its classifiers beside PPO or A2C updates, "
                              f"not {what}; use model.text_readout=vector")
        from .envs.wordings import COLORS, OBJECT_TYPES

        if list(self.model.name_classes) != [len(COLORS), len(OBJECT_TYPES)]:
            raise ConfigError(f"model.name_classes: the goto task labels its target's colour and object type: "
                              f"expected [{len(COLORS)}, {len(OBJECT_TYPES)}], got {list(self.model.name_classes)}")

    def check_hierarchical(self) -> None:
        """The hierarchical agent plays the sequential task with two memoryless policies of one model, on
        one process, without a training-time compression method, PLR or fine-tuning settings (its low
        level's are `algo.low_train`)."""
        if self.algo.type != "hierarchical":
            return
        if self.data.type != "goto" or not self.data.sequence_steps:
            raise ConfigError("algo: algo=hierarchical picks sub-goals of a sequential instruction: use data=goto-seq "
                              "(or data.sequence_steps=[2, 3])")
        if getattr(self.model, "memory", "none") != "none":
            raise ConfigError("model.memory: algo=hierarchical carries the option state itself; use model.memory=none")
        if self.hardware.distributed:
            raise ConfigError("hardware.nproc: algo=hierarchical trains on one process; use hardware.nproc=1 hardware.nnodes=1")
        if self.hardware.compile:
            raise ConfigError("hardware.compile: algo=hierarchical runs its two policies eagerly; use hardware.compile=false")
        if self.compression.type != "none" or self.teacher is not None or self.init_from is not None:
            raise ConfigError("compression: algo=hierarchical trains with compression=none and no teacher or init_from "
                              "(start its low level from a goto run with algo.low_init_from=<run dir>)")
        if self.data.level_sampler != "uniform":
            raise ConfigError("data.level_sampler: algo=hierarchical does not score levels for plr; use data.level_sampler=uniform")
        if self.finetune != FinetuneConfig():
            raise ConfigError("finetune: algo=hierarchical takes no finetune settings (freeze its low level with "
                              "algo.low_train=freeze)")

    def check_level_sampling(self) -> None:
        """PLR scores levels from the GAE advantages of an RL update: behaviour cloning plays no levels,
        distillation computes no advantages, and Dreamer's are of imagined trajectories, not of levels."""
        if getattr(self.data, "level_sampler", "uniform") != "plr":
            return
        if self.algo.type in ("bc", "dreamer") or self.compression.type == "distill":
            what = f"algo={self.algo.type}" if self.algo.type in ("bc", "dreamer") else "compression=distill"
            raise ConfigError(f"data.level_sampler: plr scores levels by the advantages of an RL update, which {what} "
                              f"does not compute; use data.level_sampler=uniform")

    def check_a3c(self) -> None:
        """A3C's workers share one model in CPU shared memory, each in its own process: one machine's
        CPU, no ranks, no compiled policy, no training-time compression method, no level sampler or curriculum."""
        if self.algo.type != "a3c":
            return
        if self.hardware.device not in ("auto", "cpu"):
            raise ConfigError(f"hardware.device: algo=a3c trains on CPU cores (a model in shared memory): "
                              f"expected auto or cpu, got {self.hardware.device!r}")
        if self.hardware.distributed:
            raise ConfigError("hardware.nproc: algo=a3c runs its own worker processes (algo.workers); "
                              "use hardware.nproc=1 hardware.nnodes=1")
        if self.hardware.compile:
            raise ConfigError("hardware.compile: algo=a3c workers run the policy eagerly; use hardware.compile=false")
        if self.compression.type != "none":
            raise ConfigError(f"compression: algo=a3c trains with compression=none only, got compression="
                              f"{self.compression.type}")
        if getattr(self.data, "level_sampler", "uniform") != "uniform" or getattr(self.data, "curriculum", "none") != "none":
            raise ConfigError("data.level_sampler: algo=a3c workers play their own envs, which the trainer's level "
                              "sampler and curriculum do not reach; use data.level_sampler=uniform data.curriculum=none")

    def check_dreamer(self) -> None:
        """Dreamer's agent is its own recurrent model (the RSSM): one rank, no training-time compression
        method, a memoryless encoder, no fine-tuning transforms, and a replay ring per env that holds
        at least one sequence."""
        if self.algo.type != "dreamer":
            return
        if self.hardware.distributed:
            raise ConfigError("hardware.nproc: algo=dreamer trains on one rank; use hardware.nproc=1 hardware.nnodes=1")
        if self.compression.type != "none":
            raise ConfigError(f"compression: algo=dreamer trains with compression=none only (docs/dreamer.md), "
                              f"got compression={self.compression.type}")
        if getattr(self.model, "memory", "none") != "none":
            raise ConfigError(f"model.memory: algo=dreamer's world model is the memory (its RSSM): use model.memory=none, "
                              f"got {self.model.memory}")
        if self.finetune != FinetuneConfig():
            raise ConfigError("finetune: algo=dreamer trains every part of its agent from scratch; leave the finetune "
                              "section at its defaults")
        rows = self.algo.replay_size // self.rollout.n_envs
        if rows < self.algo.seq_len + 1:
            raise ConfigError(f"algo.replay_size: each of the rollout.n_envs={self.rollout.n_envs} envs gets "
                              f"{rows} rows, fewer than algo.seq_len + 1 = {self.algo.seq_len + 1}")

    def check_memory_fits(self) -> None:
        """A recurrent policy (`model.memory`) learns from whole env sequences: PPO's minibatches are
        some envs' full rollouts; methods that learn from shuffled single transitions cannot train it."""
        memory = getattr(self.model, "memory", "none")
        if memory == "none":
            return
        if self.algo.type == "bc":
            raise ConfigError(f"model.memory: algo=bc learns from shuffled single transitions, which cannot train "
                              f"a recurrent policy (model.memory={memory}); use model.memory=none")
        method = self.compression.type
        if method in ("distill", "kickstart") or (method == "prune" and self.compression.structured):
            what = "prune structured" if method == "prune" else method
            raise ConfigError(f"model.memory: compression={what} does not support a recurrent policy "
                              f"(model.memory={memory}); use model.memory=none")
        if self.algo.type == "ppo" and self.algo.batch_size % self.rollout.n_steps:
            raise ConfigError(f"algo.batch_size: with model.memory={memory} a minibatch is whole env sequences: "
                              f"expected a multiple of rollout.n_steps={self.rollout.n_steps}, got {self.algo.batch_size}")

    def check_compression_sources(self) -> None:
        """Methods that learn from a teacher need `teacher`; methods that shrink a trained model need `init_from`."""
        method = self.compression.type
        if method in ("kickstart", "distill") and self.teacher is None:
            raise ConfigError(f"teacher: compression={method} learns from a teacher: give teacher=<run dir>")
        shrinks = method == "lowrank" or (method == "prune" and self.compression.structured)
        if shrinks and self.init_from is None and self.resume is None:
            raise ConfigError(f"init_from: compression={method}{' structured' if method == 'prune' else ''} shrinks a "
                              f"trained model: give init_from=<run dir> (or run mmrl compress teacher=<run dir>)")
        if self.teacher is not None and method not in ("kickstart", "distill"):
            raise ConfigError(f"teacher: only compression=kickstart or distill use a teacher, not compression={method} "
                              f"(start from a run's weights with init_from=<run dir>)")


# ------------------------------------------------------------------------- mmrl eval
@dataclass
class GifConfig:
    episodes: int = 3
    fps: int = 6
    max_steps: int = 100
    imagined: int = 0  # algo=dreamer: the decoder's view beside each frame, open loop after this many steps (0: off)

    MAX_EPISODES = 64  # a GIF is watched: more episodes than this make a file nobody plays through
    MAX_FPS = 100      # GIF frame delays are whole hundredths of a second: 10 ms is the shortest

    def check(self) -> None:
        between("gif", self, "episodes", 0, self.MAX_EPISODES)
        between("gif", self, "fps", 1, self.MAX_FPS)
        positive("gif", self, "max_steps")  # the frames it keeps are checked against memory (preflight)
        between("gif", self, "imagined", 0, 1_000_000)


@dataclass
class EvalCommandConfig:
    run: str = MISSING
    runs_root: str = "runs"
    checkpoint: str = "latest"
    episodes: int = 500
    split: str = "heldout"
    deterministic: Optional[bool] = None  # None: both argmax and sampled actions
    seed: Optional[int] = None
    data: dict[str, Any] = field(default_factory=dict)  # keys of the run's data section to change for this evaluation
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    gif: GifConfig = field(default_factory=GifConfig)

    def check(self) -> None:
        positive("", self, "episodes")
        one_of("", self, "split", SPLITS)
        if self.seed is not None:
            between("", self, "seed", 0, SEED_MAX)
        if self.checkpoint != "latest" and not CHECKPOINT_NAME.match(self.checkpoint):
            raise ConfigError(f"checkpoint: expected 'latest' or a checkpoint name such as 00000050, got {self.checkpoint!r}")
        self.hardware.check()
        self.gif.check()


GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "algo": {"ppo": PPOConfig, "a2c": A2CConfig, "a3c": A3CConfig, "bc": BCConfig, "dreamer": DreamerConfig,
             "hierarchical": HierarchicalConfig},
    "model": {"vit-gpt2": VitGpt2Config, "cnn": CnnConfig, "mlp": MlpConfig},
    "data": {"goto": GotoDataConfig, "cartpole": CartPoleDataConfig, "gym": GymDataConfig},
    "compression": {"none": NoCompression, "kickstart": KickstartCompression, "distill": DistillCompression,
                    "prune": PruneCompression, "lowrank": LowRankCompression},
}


# ------------------------------------------------------------------------ range checks
def _key(section: str, name: str) -> str:
    """The dotted key of a field (`section` is "" for top-level keys)."""
    return f"{section}.{name}" if section else name


def positive(section: str, obj: Any, *names: str) -> None:
    """Raise a ConfigError unless every named field is finite and > 0."""
    for name in names:
        value = getattr(obj, name)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{_key(section, name)}: expected a finite value > 0, got {value}")


def non_negative(section: str, obj: Any, *names: str) -> None:
    """Raise a ConfigError unless every named field is finite and >= 0."""
    for name in names:
        value = getattr(obj, name)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{_key(section, name)}: expected a finite value >= 0, got {value}")


def between(section: str, obj: Any, name: str, low: float, high: float) -> None:
    """Raise a ConfigError unless low <= field <= high (NaN is outside every range)."""
    value = getattr(obj, name)
    if not low <= value <= high:
        kind = "an integer" if isinstance(low, int) and isinstance(high, int) else "a value"
        raise ConfigError(f"{_key(section, name)}: expected {kind} in [{low}, {high}], got {value}")


def one_of(section: str, obj: Any, name: str, choices: tuple[str, ...]) -> None:
    """Raise a ConfigError unless the field is one of `choices`."""
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{_key(section, name)}: expected one of {', '.join(choices)}, got {value!r}")


# --------------------------------------------------------------------------- validation
@lru_cache(maxsize=None)
def _schema_defaults(schema: type) -> DictConfig:
    """A schema's typed defaults as an OmegaConf node, built once per schema (a third of a validation's
    time otherwise). Never modified: `OmegaConf.merge` copies its first argument."""
    return OmegaConf.structured(schema)


def _merge(schema: type, values: Any, prefix: str) -> Any:
    """Merge `values` onto a schema's defaults; turn OmegaConf errors into one line."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: expected a mapping, got {values!r}")
    try:
        merged = OmegaConf.merge(_schema_defaults(schema), values)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as e:
        raise ConfigError(f"{prefix}{e.full_key}: required (set it on the command line, e.g. {prefix}{e.full_key}=...)") from None
    except ConfigKeyError as e:
        known = ", ".join(f.name for f in fields(schema))
        raise ConfigError(f"{prefix}{e.full_key}: unknown key (expected one of: {known})") from None
    except OmegaConfBaseException as e:
        reason = str(e.msg).splitlines()[0] if e.msg else type(e).__name__
        raise ConfigError(f"{prefix}{e.full_key}: {reason}") from None


def plain_config(cfg: DictConfig | dict) -> dict:
    """A composed config as a plain dict (interpolations resolved), without Hydra's own section."""
    raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    return raw


def validate(cfg: DictConfig | dict) -> TrainConfig:
    """Check a composed config against the schemas; return typed dataclass objects.

    Raises ConfigError with a one-line message naming the offending key.
    """
    raw = plain_config(cfg)
    groups = {name: raw.pop(name, None) for name in GROUP_SCHEMAS}
    top: TrainConfig = _merge(TrainConfig, raw, "")
    for group in GROUP_SCHEMAS:
        setattr(top, group, merge_group(group, groups[group] or {}))
    top.check()
    return top


def merge_group(group: str, section: Any) -> Any:
    """A config group's section, typed by the schema its ``type`` key picks in `GROUP_SCHEMAS`."""
    options = GROUP_SCHEMAS[group]
    kind = section.get("type") if isinstance(section, dict) else None
    if kind not in options:
        raise ConfigError(f"{group}.type: expected one of {', '.join(options)}, got {kind!r}")
    own = {f.name for f in fields(options[kind])}
    for key in section:
        owners = [name for name, schema in options.items() if key not in own and key in {f.name for f in fields(schema)}]
        if owners:  # e.g. `exp=minigrid-vit algo=bc`: the preset's PPO settings reach BC
            raise ConfigError(f"{group}.{key}: {group}={kind} has no such key; it belongs to {group}="
                              f"{', '.join(owners)} (set by an exp preset made for {group}={owners[0]}? then use "
                              f"{group}={owners[0]}, or a preset made for {group}={kind})")
    return _merge(options[kind], section, f"{group}.")


def with_data_changes(train: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """A run's config with keys of its data section changed (`mmrl eval data.<key>=...`: the same env
    with other settings, e.g. longer instructions), checked as a training config is. The env type
    stays the run's."""
    if "type" in changes:
        raise ConfigError(f"data.type: an evaluation plays the run's own env ({train.data.type}); change its settings only")
    section = {**{f.name: getattr(train.data, f.name) for f in fields(train.data)}, **changes}
    changed = copy.copy(train)
    changed.data = merge_group("data", section)
    changed.check()
    return changed


def validate_eval(cfg: DictConfig | dict) -> EvalCommandConfig:
    """Check the composed config of `mmrl eval`; return it typed (ConfigError on a bad key)."""
    raw = plain_config(cfg)
    typed: EvalCommandConfig = _merge(EvalCommandConfig, raw, "")
    typed.check()
    return typed
