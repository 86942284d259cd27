"""The seed-claims study: each efficiency claim of the seed, measured on the built-in task from run
directories, with rliable statistics, written to docs/claims.md (and docs/bench/claims.json).

Every claim that can be measured here is a pair of arms (a baseline and a technique: `mmrl train`
overrides) run over the same seeds, or, for a compression method, the baseline's runs as teachers
and one `mmrl compress` student of each (same seed); an arm's runs may start from runs of another
arm of the same seed (synthetic data: `mmrl demos`, then BC on them, then RL from the BC run). Runs are reused from cache directories when a run there has the
same config (everything but where it writes, how it is monitored and evaluated, and the hardware
keys): a benchmark's runs count for the study and the other way round. Missing runs are trained into
`--cache` unless `--reuse-only`; a claim with missing runs is reported as "not measured" with the
command that measures it. Claims that cannot be measured on this machine say why.

Every run the study uses is kept in `--store` (docs/bench/claims_runs/<arm>/seed<s>/, in the
repository): its config.yaml and summary.json, which hold everything `mmrl compare` reads (the
config, the validation curve against env steps and wall seconds, the held-out result); a run that
started from another keeps what it started from (source.yaml: a student's teacher config, an RL
run's BC run config; source.source.json: that BC run's demonstration manifest), and a student its
row of the compress report (compress_row.json: parameters, non-zero parameters, file size, latency
beside the teacher's). Run
directories in caches come and go with the machine; the store stays, so the study grows across
sessions and regenerates from it alone (`--reuse-only`).

Each measured claim gets an `mmrl compare` report (curves, IQM, intervals) in <cache>/compare/<claim>
and its curve PNG in docs/img/claims/; the verdict follows from the 95% intervals:
- a claim about time (env steps or wall seconds to 0.9 validation success): holds when the
  technique's median interval lies wholly below the baseline's, does not hold when wholly above,
  otherwise inconclusive at this many seeds;
- a claim about the final held-out success: holds when the interval of P(technique > baseline)
  lies above 0.5, does not hold when below, otherwise inconclusive (a claim about other levels,
  such as transfer's held-out words, scores each run with `mmrl eval split=<split>` once trained,
  kept beside the run as eval_<split>.json);
- the sampler claim (Bayesian HPO vs random search) reads the studies `scripts/bench_sweep.py --parts
  samplers` keeps in docs/bench/sweep.json (every trial's validation value, 5 sweeps a sampler): the
  median trials until a study first reaches the target, judged as a time claim;
- a compression claim (success kept with fewer weights): each student is paired with its own
  teacher, both scored on the same held-out episodes by `mmrl compress`'s report; holds when the
  95% bootstrap interval of the mean success difference (student - teacher) lies wholly above
  -KEEP_MARGIN and the students have fewer non-zero parameters, does not hold when it lies wholly
  below (or nothing is saved), otherwise inconclusive.
Runs of an arm whose every claim is about the time to 0.9 stop there (`eval.stop_at=0.9`, held-out
levels scored at that point); the others train to their total_steps.
Wall time is only compared between runs trained alone with every core (`hardware.threads=0`, as the
study trains them): a run trained beside another counts for every other claim, not for those.

Usage:
    python scripts/claims.py --reuse-only                                  # the report from the kept runs only
    python scripts/claims.py --only actor-critic --seeds 1 2 3 4 5         # train what is missing, then report
    python scripts/claims.py --only ppo plr --jobs 2                       # two runs at a time, one core each
    python scripts/claims.py --only distillation --jobs 2                  # `mmrl compress` students of the PPO runs
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from _common import ROOT, mmrl_train, print_table, run_mmrl, write_json
from bench_hierarchical import FLAT_WIDTH
from omegaconf import OmegaConf

from mmrl_cli.checkpoint import write_text_atomic
from mmrl_cli.compare.records import find_runs, read_run, task_of
from mmrl_cli.compare.report import compare, interval, write_report
from mmrl_cli.compare.settings import validate_compare
from mmrl_cli.compare.stats import mean_band, median_interval
from mmrl_cli.compose import compose_command_config, compose_train_config
from mmrl_cli.compress.run import student_config
from mmrl_cli.compress.settings import compose_compress_config
from mmrl_cli.config import validate
from mmrl_cli.demos.command import dataset_identity, make_expert
from mmrl_cli.demos.dataset import IDENTITY_KEYS
from mmrl_cli.demos.settings import validate_demos
from mmrl_cli.errors import ConfigError

# Keys that do not change what a run learns: where it writes, how it is watched and evaluated, the hardware.
IGNORED_KEYS = ("runs_root", "run_name", "resume", "monitor", "checkpoint", "eval", "hardware")
TARGET = 0.9
STORE = ROOT / "docs/bench/claims_runs"  # the kept runs (config.yaml + summary.json each)
KEPT_FILES = ("config.yaml", "summary.json")  # what compare reads of a finished run
STUDENT_SOURCES = ("teacher", "init_from")  # keys naming a student's teacher run (a path: differs by machine)
MAX_SLUG = 160  # an arm's directory name in the store at most (file systems allow 255 bytes)
DEMO_SEED_STRIDE = 100_000  # a dataset of study seed s plays levels from s * this on: disjoint across seeds
KEEP_MARGIN = 0.02
SPLIT_EPISODES = 500  # episodes a run plays on its claim's `mmrl eval` split (argmax actions), as its own held-out
SWEEPS = ROOT / "docs/bench/sweep.json"  # scripts/bench_sweep.py's studies: every trial's value, sweeps per sampler
# The synthetic-data arm's RL stage: A2C from a BC policy, with a gentler step than from scratch (a
# scratch-sized step undoes most of what BC learned: docs/benchmarks.md, synthetic data)
SYNTHETIC_RL = ("exp=goto-a2c", "algo.lr=2e-4", "algo.ent_coef=0.001")  # a compressed policy "keeps success" when it loses at most this much held-out success


def arm_slug(overrides: list[str] | tuple[str, ...]) -> str:
    """A directory name for an arm's overrides (``exp=goto-a2c`` -> ``exp_goto-a2c``)."""
    return "+".join(re.sub(r"[^A-Za-z0-9.-]+", "_", o) for o in overrides) or "defaults"


@dataclass(frozen=True)
class Arm:
    """One arm of a claim: the runs one mmrl command makes with these overrides, each started from a
    run of its source arm of the same seed when it has one (a compress student from its teacher, an
    RL run from a BC run with `init_from`, a BC run from a demonstration dataset)."""

    overrides: tuple[str, ...]  # the command's overrides (seed and the source's path aside)
    command: str = "train"  # train | compress | demos
    source: Arm | None = None  # the arm of the run its runs start from
    source_key: str = ""  # the config key naming that run's directory (teacher, init_from, algo.demos)
    timed: bool = False  # its wall time is measured: only runs trained alone with every core count
    split: str = "heldout"  # the levels its runs are scored on: their own held-out ones, or an `mmrl eval` split

    @property
    def split_file(self) -> str:
        """The file beside a run holding its `mmrl eval` results on `split` (none for its own held-out levels)."""
        return "" if self.split == "heldout" else f"eval_{self.split}.json"

    def sources(self):
        """Its source arm, that arm's source, ... (nearest first)."""
        arm = self.source
        while arm is not None:
            yield arm
            arm = arm.source

    @property
    def slug(self) -> str:
        """Its directory name in the store (a long one cut, with a digest of the whole: names have a limit)."""
        own = arm_slug(self.overrides) if self.command == "train" else arm_slug((self.command, *self.overrides))
        slug = own if self.source is None or self.command == "compress" else f"{own}+from+{self.source.slug}"
        return slug if len(slug) <= MAX_SLUG else f"{slug[:MAX_SLUG - 13]}+{hashlib.sha256(slug.encode()).hexdigest()[:12]}"

    @property
    def command_line(self) -> str:
        """How a user makes one of its runs (its sources first)."""
        own = f"mmrl {self.command} {' '.join(self.overrides) or '(defaults)'}"
        if self.source is None:
            return own
        return f"{self.source.command_line}, then {own} {self.source_key}=<that run>"

    def seed_overrides(self, seed: int) -> list[str]:
        """The overrides that give its run of study seed `seed` (a dataset's seed is its first level:
        datasets of different seeds play disjoint levels)."""
        return [f"seed={seed * DEMO_SEED_STRIDE if self.command == 'demos' else seed}"]

    @functools.lru_cache(maxsize=None)  # noqa: B019 (a handful of arms a study, kept for its life)
    def wanted(self, seed: int) -> dict:
        """The canonical record of its run of `seed` (without its source's path)."""
        if self.command == "demos":
            typed = validate_demos(compose_command_config("demos", [*self.overrides, *self.seed_overrides(seed)]))
            expert = make_expert(typed)
            try:
                record = demos_record({**dataset_identity(typed, expert), "episodes": typed.episodes})
                return json.loads(json.dumps(record))  # as read back from a manifest (lists, not tuples)
            finally:
                expert.close()
        if self.command == "compress":
            cfg = compose_compress_config([*self.overrides, f"seed={seed}", "teacher=teacher"])
            teacher = compose_train_config([*self.source.overrides, f"seed={seed}"])
            return without_sources(canonical(plain(student_config(cfg, teacher, Path("teacher")))))
        if self.source is None:
            return wanted_config(self.overrides, seed)
        return self.own(canonical(plain(compose_train_config([*self.overrides, f"seed={seed}",
                                                               f"{self.source_key}=source"]))))

    def own(self, record: dict) -> dict:
        """A run's record without the path of its source (it differs from machine to machine)."""
        if self.command == "compress":
            return without_sources(record)
        return without_key(record, self.source_key) if self.source is not None else record

    def matcher(self, seed: int):
        """A test (run directory, canonical config) -> bool: is it this arm's run of `seed`, started
        from its source arms' runs of `seed`?"""
        want = self.wanted(seed)

        def test(path: Path, config: dict) -> bool:
            if self.own(config) != want or (self.timed and not trained_alone(path)):
                return False
            for depth, source in enumerate(self.sources(), start=1):
                file = source_file(path, config, self, depth)
                record = read_record(file) if file else None
                if record is None or source.own(record) != source.wanted(seed):
                    return False
            return True
        return test


@dataclass
class Claim:
    """One claim of the seed and how the study measures it."""

    key: str  # short name (--only, file names)
    seed_text: str  # the claim as the seed makes it (section)
    measure: str  # steps | wall_seconds | heldout | kept (compression) | sweeps (SWEEPS' studies) | none
    base: list[str] = field(default_factory=list)  # `mmrl train` overrides of the baseline arm
    tech: list[str] = field(default_factory=list)  # ... of the technique arm (`mmrl compress` overrides when kept)
    names: tuple[str, str] = ("baseline", "technique")
    not_here: str = ""  # why it cannot be measured on this machine (measure == none)
    see: str = ""  # where else the project measures it (docs/benchmarks.md section)
    cost: str = ""  # what one run costs on this machine, where that is why runs are missing
    tech_arm: Arm | None = None  # the technique arm, where its runs start from other runs (else `tech`)
    split: str = "heldout"  # the levels a heldout claim scores: heldout (the run's own) or an `mmrl eval` split


# both hierarchy arms: 400k env steps, validation every 50k (the hierarchical preset's grid); flat PPO is
# widened to the two levels' parameter count (scripts/bench_hierarchical.py's FLAT_WIDTH)
HIERARCHY_BUDGET = ["total_steps=400000", "eval.every_steps=50000", "eval.episodes=200"]
# both transfer arms (scripts/bench_transfer.py --part wordings --wordings synonyms --distractors 2, its -names
# arms): every held-out instruction in held-out words only, two distractors (each instruction needs both its
# words), the policy reading the target's colour and object as named by classifiers on the sentence vector
TRANSFER_TASK = ["model.text_readout=names", "data.wordings=synonyms", "data.num_distractors=2",
                 "eval.every_steps=100000", "eval.episodes=200"]

CLAIMS = [
    Claim("ppo", "4.6.1 PPO: clipped updates are stable and cheap (here: env steps to 0.9 beside A2C)", "steps",
          base=["exp=goto-a2c"], tech=[], names=("a2c", "ppo"), see="The built-in goto task"),
    Claim("actor-critic", "4.6.1 A3C: asynchronous workers use every core (here: wall time to 0.9 beside A2C)",
          "wall_seconds", base=["exp=goto-a2c"], tech=["exp=goto-a3c"], names=("a2c", "a3c"), see="A3C",
          cost="each run trains alone on the whole machine, ~4-7 min to 0.9 here: about an hour with nothing "
               "else running"),
    Claim("model-based", "4.6.1 model-based RL with a learned world model is sample-efficient (env steps to 0.9 "
          "beside PPO)", "steps", base=[], tech=["exp=goto-dreamer"], names=("ppo", "dreamer"),
          see="Model-based RL: Dreamer vs PPO",
          cost="a goto Dreamer run takes hours here, ~2 s a world-model update on one CPU thread: a GPU's job"),
    Claim("curriculum", "4.6.1 a curriculum from easy to hard tasks speeds learning of the hard task (env steps "
          "to 0.9)", "steps", base=["exp=goto-curriculum", "data.curriculum=none"], tech=["exp=goto-curriculum"],
          names=("hard task only", "curriculum"), see="Curriculum learning and prioritised level replay",
          cost="a run without the curriculum trains 1.2M env steps, ~40 min on one CPU thread (most never reach 0.9)"),
    Claim("hierarchy", "4.6.1 hierarchical RL solves multi-step instructions sooner (held-out success at equal "
          "steps: 400k, where the hierarchical agent has passed 0.8 and flat PPO of the same size has not started)",
          "heldout", base=["data=goto-seq", *FLAT_WIDTH, *HIERARCHY_BUDGET],
          tech=["exp=goto-seq-hierarchical", *HIERARCHY_BUDGET], names=("flat ppo", "hierarchical"),
          see="Hierarchical RL on the sequential task"),
    Claim("plr", "4.6.4 prioritised level sampling over a level subset generalises better (held-out success at "
          "equal steps)", "heldout", base=["exp=goto-plr", "data.level_sampler=uniform"], tech=["exp=goto-plr"],
          names=("uniform", "plr"), see="Curriculum learning and prioritised level replay"),
    Claim("transfer", "4.6.4 a pretrained instruction encoder helps on new wordings (success on held-out levels "
          "whose instructions name colour and object only by words no training instruction has, e.g. \"touch the "
          "latchkey that is navy\"; both text towers frozen, the baseline's the same architecture with random "
          "weights; a policy that ignores the instruction scores ~0.33)", "heldout",
          base=["exp=goto-minilm", "model.tower_weights=random", *TRANSFER_TASK],
          tech=["exp=goto-minilm", *TRANSFER_TASK], names=("random text encoder", "pretrained MiniLM"),
          split="new-wordings", see="Transfer learning"),
    Claim("distillation", "4.6.2 policy distillation keeps success at a fraction of the size (PPO teachers)",
          "kept", base=[], tech=["compression=distill"], names=("teacher", "distilled student"), see="Compression"),
    Claim("pruning", "4.6.2 pruning keeps success with fewer weights (90% unstructured sparsity, PPO teachers)",
          "kept", base=[], tech=["compression=prune"], names=("teacher", "pruned"), see="Compression"),
    Claim("low-rank", "4.6.2 low-rank factorisation keeps success with fewer weights (rank 8, PPO teachers)",
          "kept", base=[], tech=["compression=lowrank", "compression.rank=8"], names=("teacher", "low-rank"),
          see="Compression"),
    Claim("gpu", "4.6.3 a GPU and bf16 speed training up", "none",
          not_here="this machine has no GPU, and none was lent to this study", see="GPU"),
    Claim("distributed", "4.6.3 many GPUs and machines scale training", "none",
          not_here="2 CPU cores: several ranks here measure core sharing, not scaling", see="Several ranks"),
    Claim("synthetic", "4.6.4 synthetic data (generated demonstrations) cuts RL steps (here: A2C env steps to 0.9 "
          "after behaviour cloning on 2,000 planner demonstrations, beside A2C from scratch)", "steps",
          base=["exp=goto-a2c"], names=("a2c from scratch", "demos + bc + a2c"),
          see="Synthetic data: demos + BC + RL vs RL from scratch",
          tech_arm=Arm(SYNTHETIC_RL, source_key="init_from", source=Arm(
              ("algo=bc", "algo.updates=300"), source_key="algo.demos", source=Arm(("episodes=2000",), "demos")))),
    Claim("hpo", "4.6.5 Bayesian HPO finds better settings than random search (here: trials until one reaches "
          "validation return 475, CartPole PPO over 7 keys, 8k env steps a trial)", "sweeps", names=("random", "tpe"),
          see="mmrl sweep: Bayesian samplers vs random search, pruning, workers"),
    Claim("monitoring", "4.6.5 monitoring surfaces problems early", "none",
          not_here="a property of the tools (TensorBoard, the live view), not an effect with a number",
          see="Faults"),
]


def canonical(config: dict) -> dict:
    """A run's config without the keys that do not change what it learns."""
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def plain(typed) -> dict:
    """A typed config as a plain dict (what a run's config.yaml holds)."""
    return OmegaConf.to_container(OmegaConf.structured(typed), resolve=True)


def without_sources(config: dict) -> dict:
    """A student's config without the paths of its teacher (they differ from machine to machine)."""
    return {k: v for k, v in config.items() if k not in STUDENT_SOURCES}


@functools.lru_cache(maxsize=None)  # Hydra's composition is the slow part of matching runs
def wanted_config(overrides: tuple[str, ...], seed: int) -> dict:
    """The canonical config `mmrl train <overrides> seed=<seed>` composes to (composed once: do not
    change the dict returned)."""
    return canonical(plain(compose_train_config([*overrides, f"seed={seed}"])))


def read_config(path: Path) -> dict | None:
    """The canonical config in the file `path`, read through today's schemas: a key added to mmrl
    after the run was made takes its default (which keeps the old behaviour), so older runs still
    match the config `wanted_config` composes. None for a config today's mmrl refuses. Read once
    per version of the file (do not change the dict returned)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return parsed_config(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=None)
def parsed_config(path: str, mtime_ns: int, size: int) -> dict | None:
    """`read_config` of one version of a file (its modification time and size are the cache key)."""
    try:
        return canonical(plain(validate(yaml.safe_load(Path(path).read_text()))))
    except (ConfigError, OSError):
        return None


def run_config(path: Path) -> dict | None:
    """The canonical config of the run at `path` (see `read_config`)."""
    return read_config(path / "config.yaml")


def dotted(config: dict, key: str):
    """The value of a dotted key (``algo.demos``) in a nested config dict; None when absent."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def without_key(config: dict, key: str) -> dict:
    """A copy of a nested config dict without the dotted `key`."""
    head, _, rest = key.partition(".")
    if not rest:
        return {k: v for k, v in config.items() if k != head}
    return {**config, head: without_key(config.get(head) or {}, rest)}


def demos_record(manifest: dict) -> dict:
    """What makes a demonstration dataset what it is: its identity (env, expert, observation spec,
    actions, levels) and its planned episodes, from its manifest.json."""
    return {**{k: manifest.get(k) for k in IDENTITY_KEYS}, "episodes": manifest.get("episodes")}


def read_record(file: Path) -> dict | None:
    """The canonical record of a stage's file: a run's config (`read_config`) or a demonstration
    dataset's manifest (`demos_record`); None when it is not there or not readable."""
    if file.suffix != ".json":
        return read_config(file)
    try:
        return demos_record(json.loads(file.read_text()))
    except (OSError, ValueError, AttributeError):
        return None


def source_name(depth: int, arm: Arm) -> str:
    """The file a stored record keeps of its source `depth` stages up, whose arm is `arm`:
    ``source.yaml`` (a run's config), ``source.source.json`` (a dataset's manifest), ..."""
    return "source." * depth + ("json" if arm.command == "demos" else "yaml")


def source_file(path: Path, config: dict, arm: Arm, depth: int) -> Path | None:
    """The file of the run (or dataset) `depth` stages up the source chain of run `path` of `arm`
    (whose canonical config is `config`): kept beside it in the store, else found by following each
    stage's source key (a teacher, an init_from run, a BC run's demos) to its directory."""
    stages = list(arm.sources())[:depth]
    kept = path / source_name(depth, stages[-1])
    if kept.is_file():
        return kept
    here, current = config, arm
    for stage in stages:
        directory = dotted(here or {}, current.source_key)
        if not directory:
            return None
        file = Path(directory) / ("manifest.json" if stage.command == "demos" else "config.yaml")
        here, current = (read_config(file) if stage.command != "demos" else None), stage
    return file


def student_row(path: Path) -> dict | None:
    """{"teacher": row, "student": row} of the student run at `path` in `mmrl compress`'s report
    (both scored on the same held-out episodes): kept beside it in the store, else read from the
    report beside the student; None when neither is there."""
    if (path / "compress_row.json").is_file():
        return json.loads((path / "compress_row.json").read_text())
    if not (path.parent / "report.json").is_file():
        return None
    rows = json.loads((path.parent / "report.json").read_text())["rows"]
    mine = [r for r in rows if Path(r["run"]).resolve() == path.resolve()]
    return {"teacher": rows[0], "student": mine[0]} if mine else None


def trained_alone(path: Path) -> bool:
    """True when the run at `path` trained with every core (`hardware.threads=0`, how the study
    trains the runs of a wall-time claim, alone)."""
    try:
        return yaml.safe_load((path / "config.yaml").read_text())["hardware"]["threads"] == 0
    except (OSError, KeyError, TypeError):
        return False


def cut_short(path: Path) -> bool:
    """True when the run at `path` was stopped by a signal (Ctrl-C, SIGTERM): its summary is that of
    a paused run (resumable), not of a finished one, so it counts for no arm. A run a callback ended
    (a target reached, a pruner) is finished."""
    try:
        stopped_by = json.loads((path / "summary.json").read_text()).get("stopped_by")
    except (OSError, ValueError, AttributeError):
        return True
    return isinstance(stopped_by, str) and stopped_by.startswith("SIG")


def cached_runs(roots: list[Path]) -> list[tuple[Path, dict]]:
    """(run directory, canonical config) of every finished run below `roots` (not one cut short)."""
    found = []
    for root in roots:
        if not any(root.rglob("summary.json")):
            continue
        for path in find_runs([str(root)]):
            config = run_config(path) if (path / "summary.json").is_file() and not cut_short(path) else None
            if config is not None:
                found.append((path, config))
    return found


def keep(path: Path, store: Path, arm: Arm, seed: int) -> Path:
    """Copy what compare reads of the run at `path` into the store (the summary last: a record
    without it is no run), with the files of its sources (a student's teacher config) and a
    student's compress-report row; the kept
    record's directory."""
    kept = store / arm.slug / f"seed{seed}"
    if kept.resolve() == path.resolve():
        return kept
    kept.mkdir(parents=True, exist_ok=True)
    texts = {name: (path / name).read_text() for name in (*KEPT_FILES, arm.split_file) if name}
    config = read_config(path / "config.yaml")
    for depth, source in enumerate(arm.sources(), start=1):
        texts[source_name(depth, source)] = source_file(path, config, arm, depth).read_text()
    if arm.command == "compress":
        row = student_row(path)
        if row is not None:
            texts["compress_row.json"] = json.dumps(row)
    for name in sorted(texts, key=lambda n: n == "summary.json"):  # the summary last
        write_text_atomic(kept / name, texts[name])
    return kept


def stops_at_target(arm: Arm) -> bool:
    """True when the study has claims with this arm and every one is about the time to TARGET: its
    runs may end there (`eval.stop_at`; the held-out levels are scored then) instead of training on
    to total_steps. A teacher arm's runs train to the end (their students are compared with them);
    so do the runs an arm starts from (a BC run)."""
    uses = [claim.measure for claim in CLAIMS for other in arms_of(claim).values()
            if (other.overrides, other.command, other.source) == (arm.overrides, arm.command, arm.source)]
    return bool(uses) and all(measure in ("steps", "wall_seconds") for measure in uses)


def arms_of(claim: Claim) -> dict[str, Arm]:
    """The claim's two arms: name -> Arm (baseline first)."""
    base, tech = claim.names
    timed = claim.measure == "wall_seconds"
    if claim.measure == "kept":
        return {base: Arm(tuple(claim.base)),
                tech: Arm(tuple(claim.tech), "compress", source=Arm(tuple(claim.base)), source_key="teacher")}
    tech_arm = (replace(claim.tech_arm, timed=timed, split=claim.split) if claim.tech_arm
                else Arm(tuple(claim.tech), timed=timed, split=claim.split))
    return {base: Arm(tuple(claim.base), timed=timed, split=claim.split), tech: tech_arm}


@dataclass
class Missing:
    """A run the study lacks: one arm of one claim, one seed."""

    claim: str
    arm: str  # the arm's name in the claim
    spec: Arm  # timed when any claim it serves is about wall time
    seed: int

    @property
    def timed(self) -> bool:
        """An arm of a wall-time claim: trained alone, with every core."""
        return self.spec.timed

    @property
    def overrides(self) -> tuple[str, ...]:
        """The arm's `mmrl train` (or `mmrl compress`) overrides."""
        return self.spec.overrides


def find_run(arm: Arm, seed: int, found: list[tuple[Path, dict]]) -> Path | None:
    """The run of `arm` and `seed` among `found`; one trained alone with every core first (it counts
    for wall-time claims too), then one with its checkpoints (a teacher must have them)."""
    test = arm.matcher(seed)
    matches = [path for path, config in found if test(path, config)]
    matches.sort(key=lambda p: (not trained_alone(p), not (p / "checkpoints").is_dir()))
    return matches[0] if matches else None


def missing_runs(claims: list[Claim], seeds: list[int], roots: list[Path]) -> list[Missing]:
    """Every (arm, seed) of `claims` with no finished run of its config below `roots` (an arm two
    claims share is listed once, timed if either claim is about wall time)."""
    found = cached_runs(roots)
    todo: dict[tuple, Missing] = {}
    for claim in claims:
        for name, arm in arms_of(claim).items():
            for seed in seeds:
                key = (arm.overrides, arm.command, arm.source, seed)
                if key in todo:
                    todo[key].spec = replace(todo[key].spec, timed=todo[key].timed or arm.timed)
                elif find_run(arm, seed, found) is None:
                    todo[key] = Missing(claim.key, name, arm, seed)
    return list(todo.values())


def find_source(arm: Arm, seed: int, roots: list[Path]) -> Path | None:
    """A run (or dataset) of `arm` and `seed` below `roots` that another run can start from: a run
    with its weights and checkpoints (not a stored record), a complete demonstration dataset."""
    if arm.command == "demos":
        want = arm.wanted(seed)
        for manifest in (m for root in roots for m in sorted(root.rglob("manifest.json"))):
            content = json.loads(manifest.read_text())
            if content.get("complete") and demos_record(content) == want:
                return manifest.parent
        return None
    usable = [(path, config) for path, config in cached_runs(roots)
              if (path / "model.safetensors").is_file() and (path / "checkpoints").is_dir()]
    return find_run(arm, seed, usable)


def make_run(arm: Arm, seed: int, root: Path, threads: int, roots: list[Path], label: str) -> Path:
    """Make `arm`'s run of `seed` below `root` (a fresh directory), its sources first (reused from
    `roots` when there); the directory of the run (or dataset). Raises RuntimeError when a command fails."""
    source = None
    if arm.source is not None:
        source = find_source(arm.source, seed, roots) or make_run(arm.source, seed, root / "source", threads, roots,
                                                                   label)
    from_source = [f"{arm.source_key}={source}"] if source is not None else []
    print(f"[{label}] mmrl {arm.command} {' '.join([*arm.overrides, *from_source, *arm.seed_overrides(seed)])}",
          flush=True)
    if arm.command == "demos":
        run_mmrl("demos", *arm.overrides, *arm.seed_overrides(seed), f"runs_root={root}", f"out={root / 'demos'}",
                 "progress=false")
        return root / "demos"
    if arm.command == "compress":
        run_mmrl("compress", *arm.overrides, *from_source, f"seed={seed}", f"out_dir={root}", f"hardware.threads={threads}")
        return root
    stop = [f"eval.stop_at={TARGET}"] if stops_at_target(arm) else []
    summary = mmrl_train([*arm.overrides, *from_source, f"seed={seed}", *stop, f"hardware.threads={threads}"], root)
    run_dir = Path(summary["run_dir"])
    split_results(run_dir, arm, threads)
    return run_dir


def split_results(path: Path, arm: Arm, threads: int = 0) -> dict | None:
    """The `mmrl eval` results of the run at `path` on its arm's split (SPLIT_EPISODES episodes, argmax
    actions; {} for an arm scored on its runs' own held-out levels), kept beside the run in
    `arm.split_file`; evaluated now when the run has its checkpoints; None when it cannot be."""
    if not arm.split_file:
        return {}
    file = path / arm.split_file
    if file.is_file():
        return json.loads(file.read_text())
    if not (path / "checkpoints").is_dir():
        return None
    run_mmrl("eval", f"run={path}", f"split={arm.split}", f"episodes={SPLIT_EPISODES}", "deterministic=true",
             "gif.episodes=0", f"hardware.threads={threads}")
    results = json.loads((path / "eval" / "results.json").read_text())
    write_text_atomic(file, json.dumps(results, indent=2))
    return results


def train_missing(todo: list[Missing], cache: Path, jobs: int, roots: list[Path] | None = None) -> None:
    """Make the missing runs in `cache`: `jobs` at a time, each with its share of the cores (one
    torch thread at least), first the runs that start from nothing, then those that start from
    another run (compress students, RL from a BC run: their sources found below `roots`, or made
    first), then the timed ones one at a time with every core, so that no other run shares the
    machine with a run whose wall time is the measurement."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, jobs))
    roots = [cache, *(roots or [])]

    def make(run: Missing, threads: int) -> None:
        root = cache / run.claim / run.arm.replace(" ", "-") / f"seed{run.seed}"  # one root a run: no races
        try:
            make_run(run.spec, run.seed, root, threads, roots, f"{run.claim}: {run.arm}, seed {run.seed}")
        except RuntimeError as error:  # one failed run leaves its seed missing; the others go on
            print(f"[{run.claim}] {run.arm} seed {run.seed} failed: {str(error).splitlines()[-1]}", flush=True)

    untimed = [r for r in todo if not r.timed]
    for batch in ([r for r in untimed if r.spec.source is None], [r for r in untimed if r.spec.source is not None]):
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(lambda run: make(run, threads), batch))
    for run in todo:
        if run.timed:
            make(run, 0)  # 0: torch's default, every core


def arm_runs(arm: Arm, seeds: list[int], roots: list[Path], store: Path) -> tuple[list[Path], list[int]]:
    """The kept run directories of one arm (each found below `roots`, copied into the store) and the
    seeds without a run."""
    runs, missing = [], []
    # a run scored on another split needs its results there, or the weights to play them
    found = [(path, config) for path, config in cached_runs(roots)
             if not arm.split_file or (path / arm.split_file).is_file() or (path / "checkpoints").is_dir()]
    for seed in seeds:
        match = find_run(arm, seed, found)
        if match is not None:
            split_results(match, arm)
        (runs.append(keep(match, store, arm, seed)) if match else missing.append(seed))
    return runs, missing


def shown(path: Path | str) -> str:
    """A path as the report names it: relative to the repository when inside it."""
    path = Path(path)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def kept_verdict(result: dict, base: str, tech: str, rows: list[dict]) -> tuple[str, str]:
    """(effect, verdict) of a compression claim from each student paired with its own teacher on the
    same held-out episodes (the compress report): the interval of the mean success difference
    against -KEEP_MARGIN, and the non-zero parameters saved."""
    teacher, student = (result["groups"][g]["aggregates"]["IQM"] for g in (base, tech))
    iqm = f"held-out IQM {tech} {interval(student)} vs {base} {interval(teacher)}"
    scored = [r for r in rows if r["student"].get("success_rate") is not None
              and r["teacher"].get("success_rate") is not None]
    if len(scored) < 2:
        return iqm, "inconclusive (fewer than 2 students with their compress report row)"
    diffs = np.array([[r["student"]["success_rate"] - r["teacher"]["success_rate"]] for r in scored])
    diff = [float(v[0]) for v in mean_band(diffs, reps=10_000, rng=np.random.default_rng(0))]  # mean, 95% interval
    ratio = float(np.mean([r["teacher"]["nonzero_parameters"] / max(r["student"]["nonzero_parameters"], 1)
                           for r in scored]))
    effect = (f"success {tech} - {base} (paired, same held-out episodes): {diff[0]:+.3f} "
              f"[{diff[1]:+.3f}, {diff[2]:+.3f}]; {ratio:.1f}x fewer non-zero parameters; {iqm}")
    if ratio <= 1:
        return effect, "does not hold (no fewer non-zero parameters)"
    if diff[1] >= -KEEP_MARGIN:
        return effect, "holds"
    return effect, "does not hold" if diff[2] < -KEEP_MARGIN else "inconclusive at these seeds"


def demos_note(arm: Arm, runs: list[Path]) -> str:
    """What the arm's runs learned from besides their own env steps (the demonstration datasets of
    their sources, from the kept manifests), as a clause of the effect; empty when nothing."""
    for depth, source in enumerate(arm.sources(), start=1):
        if source.command != "demos" or not runs:
            continue
        totals = [json.loads((run / source_name(depth, source)).read_text()).get("totals", {}) for run in runs]
        episodes = np.mean([t.get("episodes", 0) for t in totals])
        transitions = np.mean([t.get("transitions", 0) for t in totals])
        return (f"; plus, per run, {episodes:,.0f} planner demonstrations ({transitions:,.0f} transitions) "
                f"cloned before RL, not counted in env steps")
    return ""


def verdict(claim: Claim, result: dict, base: str, tech: str) -> tuple[str, str]:
    """(effect, verdict) from the comparison of the two arms (a compression claim: `kept_verdict`)."""
    groups = result["groups"]
    if claim.measure == "heldout":
        if f"{tech} > {base}" in result["improvement"]:
            pair = result["improvement"][f"{tech} > {base}"]
        else:  # P(tech > base) = 1 - P(base > tech) (ties count half on both sides)
            point, low, high = result["improvement"].get(f"{base} > {tech}", [math.nan] * 3)
            pair = [1 - point, 1 - high, 1 - low]
        iqm = {g: interval(groups[g]["aggregates"]["IQM"]) for g in (base, tech)}
        levels = "held-out" if claim.split == "heldout" else f"`{claim.split}`"
        effect = f"P({tech} > {base}) = {interval(pair)}; {levels} IQM {tech} {iqm[tech]} vs {base} {iqm[base]}"
        if math.isnan(pair[1]):
            return effect, "inconclusive (fewer than 2 scored runs an arm)"
        return effect, "holds" if pair[1] > 0.5 else "does not hold" if pair[2] < 0.5 else "inconclusive at these seeds"
    key = "steps_median" if claim.measure == "steps" else "wall_seconds_median"
    b, t = groups[base]["to_target"][key], groups[tech]["to_target"][key]
    ratio = t[0] / b[0] if math.isfinite(t[0]) and math.isfinite(b[0]) and b[0] > 0 else math.nan
    unit = "env steps" if claim.measure == "steps" else "wall s"
    effect = f"median {unit} to {TARGET}: {tech} {interval(t, 0)} vs {base} {interval(b, 0)}"
    effect += f" ({ratio:.2f}x)" if math.isfinite(ratio) else ""
    return effect, time_verdict(t, b)


def time_verdict(tech: list[float], base: list[float]) -> str:
    """The verdict on a time to the target from the two medians' [point, low, high] intervals: holds
    when the technique's lies wholly below the baseline's, does not hold when wholly above."""
    if tech[2] < base[1]:
        return "holds"
    return "does not hold" if tech[1] > base[2] else "inconclusive at these seeds"


def measure(claim: Claim, seeds: list[int], cache: Path, roots: list[Path], store: Path) -> dict:
    """Compare the two arms of a claim from the finished runs below `roots` (trained or not)."""
    base, tech = claim.names
    arms = arms_of(claim)
    entry = {"claim": claim.key, "seed_text": claim.seed_text, "measure": claim.measure, "see": claim.see,
             "split": claim.split,
             "arms": {name: {"overrides": list(arm.overrides), "command": arm.command_line} for name, arm in arms.items()}}
    records, kept = [], {}
    for name, arm in arms.items():
        runs, missing = arm_runs(arm, seeds, roots, store)
        kept[name] = runs
        entry["arms"][name].update(runs=[shown(p) for p in runs], missing_seeds=missing)
        for path in runs:
            record = read_run(path)
            record.group, record.task = name, task_of(record)
            if arm.split_file:  # scored on another split: its `mmrl eval` results stand for the held-out ones
                record.heldout = split_results(path, arm)
            records.append(record)
    counts = [len(entry["arms"][n]["runs"]) for n in arms]
    if min(counts) < 2:
        missing = sum(len(a["missing_seeds"]) for a in entry["arms"].values())
        cost = f"; {claim.cost}" if claim.cost else ""
        entry.update(effect="-", verdict=f"not measured: {missing} runs missing "
                                         f"(`python scripts/claims.py --only {claim.key}` trains them{cost})")
        return entry
    out = cache / "compare" / claim.key
    typed = validate_compare({"runs": [str(cache)], "runs_root": str(cache), "out": str(out), "target": TARGET})
    result = compare(typed, records)
    write_report(result, out)
    figure = ROOT / "docs/img/claims" / f"{claim.key}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    shown_figure = {"wall_seconds": "curves_wall.png", "kept": "aggregates.png"}.get(claim.measure, "curves_steps.png")
    shutil.copyfile(out / shown_figure, figure)
    if claim.measure == "kept":
        effect, word = kept_verdict(result, base, tech, [r for r in map(student_row, kept[tech]) if r])
    else:
        effect, word = verdict(claim, result, base, tech)
    effect += demos_note(arms[tech], kept[tech])
    note = f" ({min(counts)} of {len(seeds)} seeds)" if min(counts) < len(seeds) else ""
    entry.update(effect=effect, verdict=word + note, figure=str(figure.relative_to(ROOT)), report=str(out),
                 aggregates={g: result["groups"][g]["aggregates"] for g in arms},
                 to_target={g: result["groups"][g].get("to_target") for g in arms})
    return entry


def measure_sweeps(claim: Claim, path: Path) -> dict:
    """A sampler claim from the studies `scripts/bench_sweep.py --parts samplers` kept (every trial's
    validation value, several sweeps a sampler): the median number of trials until one reaches the
    target, with its 95% bootstrap interval (a sweep that never gets there counts as infinite), the
    technique's against the baseline's, judged as a time claim."""
    base, tech = claim.names
    entry = {"claim": claim.key, "seed_text": claim.seed_text, "measure": claim.measure, "see": claim.see,
             "source": shown(path)}
    try:
        part = json.loads(path.read_text())["samplers"]
        studies = [s for s in part["studies"] if s.get("pruner") == "none"]
    except (OSError, ValueError, KeyError):
        return {**entry, "effect": "-", "verdict": f"not measured: no sampler studies in {shown(path)} "
                                                    "(`python scripts/bench_sweep.py --parts samplers` makes them)"}
    rng = np.random.default_rng(0)
    needed = {}
    for study in studies:
        first = next((i + 1 for i, v in enumerate(study["values"]) if v is not None and v >= part["target"]), math.inf)
        needed.setdefault(study["sampler"], []).append(first)
    medians = {name: median_interval(values, 10_000, rng) for name, values in needed.items()}
    if base not in medians or tech not in medians or min(len(needed[base]), len(needed[tech])) < 2:
        return {**entry, "effect": "-", "verdict": f"not measured: fewer than 2 sweeps of {base} or {tech} in {shown(path)}"}
    b, t = medians[base], medians[tech]
    others = "; ".join(f"{name} {interval(m, 0)}" for name, m in medians.items() if name not in (base, tech))
    effect = (f"median trials to {part['target']:g}: {tech} {interval(t, 0)} vs {base} {interval(b, 0)} "
              f"({t[0] / b[0]:.2f}x){'; ' + others if others else ''}; {len(needed[tech])} sweeps each "
              f"of {part['trials']} trials ({shown(path)})")
    return {**entry, "effect": effect, "verdict": time_verdict(t, b), "trials_to_target": needed, "medians": medians}


def markdown(entries: list[dict], seeds: list[int]) -> str:
    """docs/claims.md."""
    lines = ["# The seed's efficiency claims, measured", "",
             "Generated by `python scripts/claims.py` (do not edit by hand): every measured figure comes from the",
             "run directories listed under each claim, through `mmrl compare`'s statistics (IQM, 95% stratified",
             "bootstrap intervals, median time to 0.9 validation success with runs that never get there counted as",
             "infinite). A compression claim pairs each `mmrl compress` student with its own teacher on the same",
             "held-out episodes (the compress report): success is kept when the mean difference loses at most",
             f"{KEEP_MARGIN}, with fewer non-zero parameters. Verdicts follow from the intervals: see the script's",
             "docstring.", "",
             f"Seeds asked: {', '.join(map(str, seeds))}. Machine: 2 CPU cores, no GPU.", "",
             "| claim | seed says | measured effect | verdict | also in docs/benchmarks.md |", "|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['claim']} | {e['seed_text']} | {e.get('effect', '-')} | {e['verdict']} | {e['see']} |")
    for e in entries:
        if "arms" not in e or not any(a.get("runs") for a in e["arms"].values()):
            continue
        lines += ["", f"## {e['claim']}", ""]
        for name, arm in e["arms"].items():
            agg = e.get("aggregates", {}).get(name)
            levels = "held-out" if e.get("split", "heldout") == "heldout" else f"`{e['split']}` split"
            iqm = f"; final {levels} IQM {interval(agg['IQM'])}" if agg else ""
            lines.append(f"- **{name}** (`{arm['command']}`): "
                         f"{len(arm['runs'])} runs{iqm}; missing seeds: {arm['missing_seeds'] or 'none'}")
            lines += [f"  - `{p}`" for p in arm["runs"]]
        if e.get("figure"):
            lines += ["", f"![{e['claim']}]({Path(e['figure']).relative_to('docs')})"]
    return "\n".join(lines) + "\n"


def writable(path: Path) -> bool:
    """True when `path` can be made: a file can be created in its nearest existing directory
    (tried, then removed: permission bits alone do not say so for root or special file systems)."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        with tempfile.TemporaryFile(dir=existing if existing.is_dir() else existing.parent):
            return True
    except OSError:
        return False


def bad_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the command line, in one line naming the option (None: nothing), checked
    before anything trains or is written."""
    if args.jobs < 1:
        return f"--jobs: expected at least 1, got {args.jobs}"
    unknown = set(args.only or []) - {c.key for c in CLAIMS}
    if unknown:
        return f"--only: unknown claim(s) {sorted(unknown)}; expected some of {[c.key for c in CLAIMS]}"
    for flag, path in (("--out", args.out), ("--json", args.json), ("--store", args.store), ("--cache", args.cache)):
        if flag in ("--out", "--json") and path.is_dir() or not writable(path):
            return f"{flag}: {path} cannot be written"
    missing = [str(p) for p in args.reuse if not p.is_dir()]
    return f"--reuse: not a directory: {', '.join(missing)}" if missing else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--only", nargs="+", default=None, help="claims to measure (default: all)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs/claims", help="where missing runs are trained")
    parser.add_argument("--reuse", type=Path, nargs="*", default=[], help="more directories of runs to reuse")
    parser.add_argument("--store", type=Path, default=STORE, help="where the runs the study uses are kept")
    parser.add_argument("--reuse-only", action="store_true", help="train nothing: report from cached runs")
    parser.add_argument("--jobs", type=int, default=1,
                        help="missing runs trained at once, each with cores/jobs torch threads (runs of a wall-time "
                             "claim always train alone, with every core)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/claims.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs/bench/claims.json")
    args = parser.parse_args()
    problem = bad_arguments(args)
    if problem:
        print(f"claims.py: {problem}", file=sys.stderr)
        sys.exit(2)
    roots = [args.store, args.cache, *args.reuse]
    if not args.reuse_only:
        chosen = [c for c in CLAIMS if c.measure not in ("none", "sweeps") and (args.only is None or c.key in args.only)]
        train_missing(missing_runs(chosen, args.seeds, roots), args.cache, args.jobs, roots)
    entries = []
    for claim in CLAIMS:
        if claim.measure == "none":
            entries.append({"claim": claim.key, "seed_text": claim.seed_text, "see": claim.see,
                            "verdict": f"not measurable here: {claim.not_here}"})
        elif claim.measure == "sweeps":
            entries.append(measure_sweeps(claim, SWEEPS))
        else:
            entries.append(measure(claim, args.seeds, args.cache, roots, store=args.store))
    print_table("The seed's claims", ["claim", "effect", "verdict"],
                [[e["claim"], e.get("effect", "-"), e["verdict"]] for e in entries])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, markdown(entries, args.seeds))
    write_json(args.json, {"seeds": args.seeds, "claims": entries})
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
