"""Hostile input: every case is one error line naming the problem, exit 2, no traceback, no files.

The cases run in-process through `mmrl_cli.cli.main` (the same path as the console script up
to the point where Hydra would start), against a real trained run that each case may damage.
"""

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mmrl_cli import trainer
from mmrl_cli.cli import main
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import validate

MARKER = "pickle-payload-ran"


class Payload:
    """Unpickling this creates a marker file: proof that the pickle ran."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A real (tiny) CartPole run with one checkpoint."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("train", overrides=[
            "data=cartpole", "model=mlp", "total_steps=256", "rollout.n_envs=4", "rollout.n_steps=32", "algo.batch_size=64",
            "eval.episodes=2", "checkpoint.keep_last=1", "monitor.progress=false", "monitor.tensorboard=false",
        ]))
    run_dir = tmp_path_factory.mktemp("source") / "run"
    run_dir.mkdir()
    trainer.train(cfg, run_dir)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    return run_dir


def only_checkpoint(cwd: Path) -> Path:
    (path,) = [p for p in (cwd / "myrun" / "checkpoints").iterdir() if p.name.isdigit()]
    return path


def rehash(checkpoint: Path) -> None:
    """Make meta.json agree with the files again (an attacker who controls the whole directory)."""
    meta = json.loads((checkpoint / "meta.json").read_text())
    for name in meta["sha256"]:
        meta["sha256"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def truncate_model(cwd):
    path = only_checkpoint(cwd) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def flip_state_byte(cwd):
    path = only_checkpoint(cwd) / "state.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage_meta(cwd):
    (only_checkpoint(cwd) / "meta.json").write_text("{not json")


def no_checkpoints(cwd):
    shutil.rmtree(cwd / "myrun" / "checkpoints")


def pickle_model(cwd):
    checkpoint = only_checkpoint(cwd)
    (checkpoint / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    rehash(checkpoint)


def pickle_state(cwd):
    checkpoint = only_checkpoint(cwd)
    (checkpoint / "state.safetensors").write_bytes(pickle.dumps(Payload()))
    rehash(checkpoint)


def tampered_config(cwd):
    checkpoint = only_checkpoint(cwd)
    path = checkpoint / "config.yaml"
    path.write_text(path.read_text().replace("n_envs: 4", "n_envs: -3"))
    rehash(checkpoint)


def format1_run(cwd):
    shutil.copytree(Path(__file__).parent / "data" / "run-format1", cwd / "oldrun")


def eval_dir_is_a_file(cwd):
    (cwd / "myrun" / "eval").write_text("not a directory")


def empty_dir(cwd):
    (cwd / "emptydir").mkdir()


def a_file(cwd):
    (cwd / "somefile.txt").write_text("hello")


# --- tampered checkpoints (meta.json has no checksum of its own; rehash() makes the others agree),
# and a run another process trains in
def edit_meta(cwd, edit) -> None:
    checkpoint = only_checkpoint(cwd)
    meta = json.loads((checkpoint / "meta.json").read_text())
    edit(meta)
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def edit_tensors(cwd, file, edit, metadata=None) -> None:
    from safetensors.torch import load_file, save_file

    checkpoint = only_checkpoint(cwd)
    tensors = load_file(str(checkpoint / file))
    edit(tensors)
    save_file(tensors, str(checkpoint / file), metadata=metadata)
    rehash(checkpoint)


def meta_damage(name, edit):
    """A damage function that edits meta.json with `edit(meta)`."""
    def damage(cwd):
        edit_meta(cwd, edit)
    damage.__name__ = name
    return damage


def state_damage(name, key, make):
    """A damage function that replaces tensor `key` of state.safetensors by `make(old)`."""
    def damage(cwd):
        edit_tensors(cwd, "state.safetensors", lambda t: t.update({key: make(t[key])}))
    damage.__name__ = name
    return damage


def progress(**changes):
    return lambda meta: meta["state"]["progress"].update(changes)


def model_float64(cwd):
    edit_tensors(cwd, "model.safetensors", lambda t: t.update({k: v.double() for k, v in t.items()}))


def broken_structure(cwd):
    """A structurally compressed policy's header with a bias one longer than its layer."""
    def edit(tensors):
        key = next(k for k in sorted(tensors) if tensors[k].dim() == 1)
        tensors[key] = tensors[key].new_zeros(tensors[key].shape[0] + 1)
    edit_tensors(cwd, "model.safetensors", edit, metadata={"mmrl_structure": "compressed"})


def inconsistent_sparse(cwd):
    edit_tensors(cwd, "model.safetensors", lambda t: None, metadata={"mmrl_sparse": json.dumps({"x": [2, 3]})})


def run_in_use(cwd):
    """Another process holds the run's lock (as one training in it does) for the rest of the case."""
    import atexit
    import subprocess
    import sys

    script = (f"from mmrl_cli.runs import RunLock; lock = RunLock({str(cwd / 'myrun')!r}).acquire(); "
              "print('held', flush=True); import time; time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    atexit.register(holder.kill)
    assert holder.stdout.readline().strip() == "held"


CASES = [
    # --- mmrl train: keys, types, values
    ("train", ["foo=1"], None, "foo: unknown key"),
    ("train", ["algo.lrr=1"], None, "algo.lrr"),
    ("train", ["+algo.extra=1"], None, "algo.extra: unknown key"),
    ("train", ["data=gym", "data.env_kwargs={maxRoomSize: 5}"], None,  # a free-form dict given new keys
     "data.env_kwargs: a dict with new keys (data.env_kwargs.maxRoomSize) replaces the old one with ++data.env_kwargs={...}"),
    ("train", ["algo.lr=abc"], None, "algo.lr"),
    ("train", ["rollout.n_envs=2.5"], None, "rollout.n_envs"),
    ("train", ["rollout.n_envs=0"], None, "rollout.n_envs: expected a finite value > 0"),
    ("train", ["algo.lr=-1"], None, "algo.lr: expected a finite value > 0"),
    ("train", ["algo.lr=nan"], None, "algo.lr: expected a finite value > 0"),
    ("train", ["algo=a2c", "algo.eps=inf"], None, "algo.eps: expected a finite value > 0"),
    ("train", ["algo=a2c", "algo.optimizer=sgd"], None, "algo.optimizer: expected one of rmsprop, adam"),
    ("train", ["algo=a2c", "algo.clip_range=0.2"], None, "algo.clip_range: unknown key"),
    ("train", ["exp=minigrid-vit", "algo=bc"], None,  # the preset's PPO settings do not fit BC
     "algo.n_epochs: algo=bc has no such key; it belongs to algo=ppo, hierarchical (set by an exp preset made for algo=ppo?"),
    ("train", ["algo.ent_coef=nan"], None, "algo.ent_coef: expected a finite value >= 0"),
    ("train", ["total_steps=0"], None, "total_steps: expected a finite value > 0"),
    ("train", ["exp=nope"], None, "exp=nope: unknown option"),
    ("train", ["data.grid_size=2", "data.num_distractors=0"], None, "data.grid_size: a 2x2 grid"),
    ("train", ["algo.gamma=1.5"], None, "algo.gamma"),
    # --- the sequential task and the hierarchical agent (docs/hierarchical.md)
    ("train", ["data=goto-seq", "data.sequence_steps=[0]"], None, "data.sequence_steps.0: expected a step count in [1, 4], got 0"),
    ("train", ["data=goto-seq", "data.sequence_steps=[2, 5]"], None, "data.sequence_steps.1: expected a step count in [1, 4]"),
    ("train", ["data=goto-seq", "data.sequence_steps=[two]"], None, "data.sequence_steps"),
    ("train", ["data=goto-seq", "data.sequence_steps=[4]", "data.num_distractors=15"], None,
     "data.sequence_steps: up to 4 steps and 15 distractors need 19 distinct objects; there are 18"),
    ("train", ["data=goto-seq", "data.sequence_steps=[4]", "data.grid_size=3", "data.num_distractors=5"], None,
     "data.sequence_steps: a 3x3 grid has no room for the agent, 4 targets, 5 distractors"),
    ("train", ["algo=hierarchical"], None, "algo: algo=hierarchical picks sub-goals of a sequential instruction"),
    ("train", ["algo=hierarchical", "data=goto-seq", "algo.option_steps=0"], None, "algo.option_steps: expected an integer in"),
    ("train", ["algo=hierarchical", "data=goto-seq", "algo.low_train=thaw"], None, "algo.low_train: expected one of finetune, freeze"),
    ("train", ["algo=hierarchical", "data=goto-seq", "algo.high_head=attention"], None, "algo.high_head: expected one of pointer, index"),
    ("train", ["algo=hierarchical", "data=goto-seq", "algo.low_train=freeze"], None, "algo.low_train: freeze keeps the low level"),
    ("train", ["algo=hierarchical", "data=goto-seq", "algo.low_init_from=/nonexistent/run"], None, "algo.low_init_from"),
    ("train", ["algo=hierarchical", "data=goto-seq", "model.memory=lstm"], None, "model.memory: algo=hierarchical"),
    ("demos", ["data=goto-seq"], None, "data.sequence_steps: the planner demonstrates one-step goto levels"),
    # --- level samplers and curricula (docs/curriculum.md)
    ("train", ["data.level_sampler=best"], None, "data.level_sampler: expected one of uniform, plr"),
    ("train", ["data.level_sampler=plr"], None, "data.num_train_levels: data.level_sampler=plr replays a finite set"),
    ("train", ["data.level_sampler=plr", "data.num_train_levels=20", "data.plr_temperature=nan"], None,
     "data.plr_temperature: expected a finite value > 0"),
    ("train", ["data.plr_temperature=0"], None, "data.plr_temperature: expected a finite value > 0"),
    ("train", ["data.plr_staleness_coef=1.5"], None, "data.plr_staleness_coef: expected a value in [0.0, 1.0]"),
    ("train", ["data.plr_staleness_coef=nan"], None, "data.plr_staleness_coef"),
    ("train", ["data.plr_alpha=0"], None, "data.plr_alpha: expected a value in (0, 1]"),
    ("train", ["data.plr_replay_prob=-0.1"], None, "data.plr_replay_prob"),
    ("train", ["data.plr_score=return"], None, "data.plr_score: expected one of value_l1, positive_value_loss"),
    ("train", ["data.plr_replay_schedule=always"], None, "data.plr_replay_schedule"),
    ("train", ["data.curriculum=magic"], None, "data.curriculum: expected one of none, success, schedule"),
    ("train", ["data.curriculum=success"], None, "data.curriculum_stages: data.curriculum=success needs at least one"),
    ("train", ["data.curriculum=success", "data.curriculum_stages=[{num_distractors:0}]", "data.curriculum_threshold=1.5"],
     None, "data.curriculum_threshold: expected a value in [0.0, 1.0]"),
    ("train", ["data.curriculum_threshold=-0.1"], None, "data.curriculum_threshold"),
    ("train", ["data.curriculum_threshold=nan"], None, "data.curriculum_threshold"),
    ("train", ["data.curriculum_window=0"], None, "data.curriculum_window"),
    ("train", ["data.curriculum_stage_steps=0"], None, "data.curriculum_stage_steps"),
    ("train", ["data.curriculum_stop=true"], None, "data.curriculum_stop: there is no curriculum"),
    ("train", ["data.curriculum=success", "data.curriculum_stages=[{grid_size:3}]"], None,
     "data.curriculum_stages.0.grid_size: unknown stage setting"),
    ("train", ["data.curriculum=success", "data.curriculum_stages=[{num_distractors:-1}]"], None,
     "data.curriculum_stages.0.num_distractors: expected an integer >= 0"),
    ("train", ["data.curriculum=success", "data.curriculum_stages=[{num_walls:30}]"], None, "data.curriculum_stages.0:"),
    ("train", ["data.curriculum=success", "data.curriculum_stages=[3]"], None, "data.curriculum_stages.0: expected a mapping"),
    ("train", ["data=gym", "data.curriculum=success", "data.curriculum_stages=[NoSuchEnv-v0]"], None,
     "data.curriculum_stages.0: 'NoSuchEnv-v0' is not a registered gymnasium env id"),
    ("train", ["data=gym", "data.curriculum=success", "data.curriculum_stages=[MountainCar-v0]"], None,
     "data.curriculum_stages.0: MountainCar-v0 does not look like CartPole-v1"),
    ("train", ["data=gym", "data.num_train_levels=10", "data.vectorization=async"], None, "data.vectorization: training on chosen"),
    ("train", ["algo=bc", "algo.demos=x", "data.level_sampler=plr", "data.num_train_levels=10"], None,
     "data.level_sampler: plr scores levels by the advantages of an RL update, which algo=bc"),
    ("train", ["algo.n_epochs=100000000"], None, "algo.n_epochs"),
    ("train", ["algo=bc"], None, "algo.demos: required"),
    ("train", ["algo=bc", "algo.demos=nowhere"], None, "algo.demos: nowhere: no such directory"),
    ("train", ["model.memory=foo", "model=mlp", "data=cartpole"], None, "model.memory"),
    ("train", ["algo.batch_size=100000"], None, "algo.batch_size"),
    ("train", ["algo.lr_schedule=cosine"], None, "algo.lr_schedule"),
    ("train", ["model.heads=5"], None, "model.heads"),
    ("train", ["data.grid_size=1"], None, "data.grid_size"),
    ("train", ["eval.episodes=0"], None, "eval.episodes"),
    ("train", ["eval.stop_at=1.5"], None, "eval.stop_at"),
    ("train", ["eval.stop_at=nan"], None, "eval.stop_at"),
    ("train", ["monitor.grad_vanish_below=-1"], None, "monitor.grad_vanish_below"),
    ("train", ["checkpoint.every_updates=0"], None, "checkpoint.every_updates"),
    ("train", ["checkpoint.keep_last=-2"], None, "checkpoint.keep_last"),
    ("train", ["numerics.max_skipped_in_a_row=0"], None, "numerics.max_skipped_in_a_row"),
    ("train", ["seed=abc"], None, "seed"),
    # --- group options and override syntax
    ("train", ["model=nope"], None, "model=nope: unknown option"),
    ("train", ["data=nope"], None, "data=nope: unknown option"),
    ("train", ["hardware=nope"], None, "hardware=nope: unknown option"),
    ("train", ["algo=nope"], None, "algo=nope: unknown option"),
    ("train", ["compression=nope"], None, "compression=nope: unknown option"),
    ("train", ["algo.lr=[1,"], None, "malformed override"),
    ("train", ["=1"], None, "malformed override"),
    ("train", ["--badflag"], None, "unknown flag"),
    ("train", ["-m", "seed=1,x"], None, "seed"),
    ("train", ["-m", "algo.lr=0.1,-1"], None, "algo.lr: expected a finite value > 0"),
    # --- devices, envs, models that do not fit
    ("train", ["hardware.device=cuda"], None, "hardware.device"),
    ("train", ["hardware.device=tpu"], None, "hardware.device"),
    ("train", ["hardware.precision=fp8"], None, "hardware.precision"),
    ("train", ["data=gym", "data.env_id=NoSuchEnv-v0", "model=mlp"], None, "data.env_id"),
    ("train", ["data=gym", "data.env_id=os:system", "model=mlp"], None, "data.env_id"),
    ("train", ["data=cartpole", "model=cnn"], None, "model: model=cnn needs image observations"),
    ("train", ["data=cartpole"], None, "model: model=vit-gpt2 needs image observations"),
    # --- sizes that cannot be allocated (checked before anything is built)
    ("train", ["data.grid_size=100000"], None, "data.grid_size: one env's observation needs"),
    ("train", ["data.tile_size=100000"], None, "data.tile_size: one env's observation needs"),
    ("train", ["rollout.n_envs=100000000"], None, "rollout.n_envs: the rollout"),
    ("train", ["rollout.n_steps=100000000"], None, "rollout.n_steps: the rollout"),
    ("train", ["eval.episodes=1000000000"], None, "eval.episodes: evaluating"),
    ("train", ["model.hidden_size=10000000"], None, "model.hidden_size: the model has"),
    ("train", ["model=cnn", "model.hidden=2000000000"], None, "model.hidden: the model has"),
    ("train", ["data=cartpole", "model=mlp", "model.hidden_sizes=[100000000]"], None,
     "model.hidden_sizes: one forward pass over"),
    ("train", ["data=cartpole", "model=mlp", "model.hidden_sizes=[100000,100000]"], None, "model.hidden_sizes: the model has"),
    # --- paths that cannot be written
    ("train", ["runs_root=/proc/mmrl-runs"], None, "runs_root: /proc/mmrl-runs is not writable"),
    ("train", ["runs_root=/dev/null/runs"], None, "runs_root: /dev/null/runs cannot be created"),
    ("train", ["runs_root=somefile.txt"], a_file, "runs_root: somefile.txt exists and is not a directory"),
    ("train", ["runs_root=somefile.txt/deeper"], a_file, "runs_root: somefile.txt/deeper cannot be created"),
    # --- non-finite floats, on keys with and without a range of their own
    ("train", ["algo.gamma=nan"], None, "algo.gamma"),
    ("train", ["algo.clip_value=inf"], None, "algo.clip_value"),
    ("train", ["algo.target_kl=nan"], None, "algo.target_kl"),
    ("train", ["model.pos_init_std=inf"], None, "model.pos_init_std"),
    ("train", ["monitor.grad_explode_above=nan"], None, "monitor.grad_explode_above"),
    ("train", ["algo=a2c", "algo.rmsprop_alpha=nan"], None, "algo.rmsprop_alpha"),
    ("train", ["algo=a2c", "algo.lr_warmup=0.9"], None, "algo.lr_warmup: expected a value in [0.0, 0.5], got 0.9"),
    ("train", ["algo=a3c", "algo.lr_warmup=nan"], None, "algo.lr_warmup: expected a value in [0.0, 0.5]"),
    ("train", ["algo=a3c", "algo.workers=0"], None, "algo.workers: expected an integer in [1, "),
    ("train", ["algo=a3c", "algo.workers=-3"], None, "algo.workers: expected an integer in [1, "),
    ("train", ["algo=a3c", "algo.workers=100000"], None, "algo.workers: expected an integer in [1, "),
    ("train", ["algo=a3c", "algo.workers=two"], None, "algo.workers"),
    ("train", ["algo=a3c", "algo.reports_per_step=0"], None, "algo.reports_per_step: expected an integer in [1, "),
    ("train", ["algo=a3c", "algo.max_restarts=-1"], None, "algo.max_restarts: expected an integer in [0, "),
    ("train", ["algo=a3c", "hardware.device=cuda"], None, "hardware.device: algo=a3c trains on CPU cores"),
    ("train", ["algo=a3c", "hardware=ddp"], None, "hardware.nproc: algo=a3c runs its own worker processes"),
    ("train", ["algo=dreamer", "algo.horizon=0"], None, "algo.horizon: expected an integer in [1, "),
    ("train", ["algo=dreamer", "algo.train_ratio=nan"], None, "algo.train_ratio: expected a finite value > 0, got nan"),
    ("train", ["algo=dreamer", "algo.train_ratio=-1"], None, "algo.train_ratio: expected a finite value > 0"),
    ("train", ["algo=dreamer", "algo.seq_len=1"], None, "algo.seq_len: expected an integer in [2, "),
    ("train", ["algo=dreamer", "algo.slow_critic_reg=-1"], None, "algo.slow_critic_reg: expected"),
    ("train", ["algo=dreamer", "algo.critic_updates=0"], None, "algo.critic_updates: expected an integer in [1, 100]"),
    ("train", ["algo=dreamer", "algo.slow_critic_reg=nan"], None, "algo.slow_critic_reg: expected"),
    ("train", ["algo=dreamer", "algo.replay_size=2000000000"], None,
     "algo.replay_size: 2,000,000,000 rows of this env's observations need"),
    ("train", ["algo=dreamer", "algo.replay_size=100", "algo.seq_len=64"], None,
     "algo.replay_size: each of the rollout.n_envs=4 envs gets 25 rows, fewer than algo.seq_len + 1 = 65"),
    ("train", ["algo=dreamer", "data=cartpole", "model=mlp", "model.memory=lstm"], None,
     "model.memory: algo=dreamer's world model is the memory"),
    ("train", ["algo=dreamer", "hardware=ddp"], None, "hardware.nproc: algo=dreamer trains on one rank"),
    ("train", ["algo=dreamer", "compression=prune", "compression.structured=false"], None,
     "compression: algo=dreamer trains with compression=none only"),
    ("train", ["algo=dreamer", "data.level_sampler=plr", "data.num_train_levels=10"], None,
     "data.level_sampler: plr scores levels by the advantages of an RL update, which algo=dreamer"),
    ("train", ["algo=dreamer", "finetune.freeze=[text]"], None, "finetune: algo=dreamer trains every part"),
    ("train", ["algo=a3c", "hardware.compile=true"], None, "hardware.compile: algo=a3c"),
    ("train", ["algo=a3c", "compression=prune"], None, "compression: algo=a3c trains with compression=none only"),
    ("train", ["algo=a3c", "data.level_sampler=plr", "data.num_train_levels=50"], None,
     "data.level_sampler: algo=a3c workers play their own envs"),
    # --- integers outside what their consumer accepts
    ("train", ["seed=-1"], None, "seed: expected an integer in [0, 2147483647]"),
    ("train", ["seed=4294967296"], None, "seed: expected an integer in [0, 2147483647]"),
    ("train", ["seed=99999999999999999999"], None, "seed"),
    ("train", ["model.keypoints=3000000000"], None, "model.keypoints: expected an integer of at most"),
    ("train", ["checkpoint.keep_last=1099511627776"], None, "checkpoint.keep_last: expected an integer of at most"),
    ("train", ["hardware.threads=-1"], None, "hardware.threads"),
    ("train", ["data=gym", "data.env_id=CartPole-v1", "model=mlp", "data.mission_tokens=0"], None, "data.mission_tokens"),
    # --- observation kinds that do not fit
    ("train", ["data=gym", "data.env_id=CartPole-v1", "model=mlp", "data.image=symbolic"], None,
     "data.image=symbolic but the env has no (H, W, C) image"),
    ("train", ["data=gym", "data.env_id=CartPole-v1", "model=mlp", "data.image=rgb"], None, "data.image: expected one of"),
    ("train", ["data=gym", "data.env_id=CartPole-v1", "model=mlp", "data.constant_mission=maybe"], None,
     "data.constant_mission: expected one of drop, keep"),
    ("train", ["exp=minigrid-ppo", "model.grid_embed=-1"], None, "model.grid_embed: expected a finite value >= 0"),
    ("train", ["exp=minigrid-vit", "model.grid_embed=0"], None, "model.grid_embed: expected a finite value > 0"),
    ("train", ["model=cnn", "model.strides=[1]"], None, "model.strides: expected one positive stride per conv layer"),
    ("train", ["model=cnn", "model.channels=[8,8,8,8,8,8]", "model.strides=[1,1,1,1,1,1]", "model.kernel_size=4",
              "data.tile_size=1"], None,
     "model.channels: a 5x5 image is too small"),
    # --- run names that would escape the runs root
    ("train", ["run_name=../escape"], None, "run_name"),
    ("train", ["run_name=/abs/path"], None, "run_name"),
    ("train", ["run_name=a/b"], None, "run_name"),
    ("train", ["run_name=.."], None, "run_name"),
    # --- resume: missing, non-mmrl, broken, mismatched, malicious runs
    ("train", ["resume=/nonexistent/run"], None, "resume: /nonexistent/run does not exist"),
    ("train", ["resume=emptydir"], empty_dir, "is not an mmrl run directory"),
    ("train", ["resume=somefile.txt"], a_file, "is not a directory"),
    ("train", ["resume=latest"], None, "resume=latest: no run with a checkpoint"),
    ("train", ["resume=myrun"], no_checkpoints, "has no checkpoint yet"),
    ("train", ["resume=myrun"], truncate_model, "truncated or corrupted"),
    ("train", ["resume=myrun"], flip_state_byte, "truncated or corrupted"),
    ("train", ["resume=myrun"], garbage_meta, "meta.json is corrupted"),
    ("train", ["resume=myrun"], pickle_model, "not a valid safetensors file"),
    ("train", ["resume=myrun"], pickle_state, "not a valid safetensors file"),
    ("train", ["resume=myrun"], tampered_config, "rollout.n_envs: expected a finite value > 0"),
    ("train", ["resume=myrun", "model.hidden_sizes=[32,32]"], None, "does not match the configured model"),
    ("train", ["resume=myrun", "model=cnn"], None, "a resumed run keeps its config groups"),
    ("train", ["resume=myrun", "rollout.n_envs=8"], None, "rollout.n_envs: cannot change when resuming"),
    ("train", ["resume=myrun", "exp=cartpole-a2c"], None, "a resumed run keeps its config groups"),
    ("train", ["resume=oldrun"], format1_run, "mmrl 0.1 (format 1), which this version cannot continue"),
    ("train", ["resume=myrun", "data.max_steps=100"], None, "data.max_steps: cannot change when resuming"),
    # --- mmrl eval
    ("eval", [], None, "run: required"),
    ("eval", ["run=/nonexistent"], None, "run: /nonexistent does not exist"),
    ("eval", ["run=emptydir"], empty_dir, "is not an mmrl run directory"),
    ("eval", ["run=myrun", "checkpoint=nope"], None, "checkpoint: expected 'latest' or a checkpoint name"),
    ("eval", ["run=myrun", "gif.imagined=3"], None, "gif.imagined: only a world-model run (algo=dreamer) imagines frames"),
    ("eval", ["run=myrun", "gif.imagined=-1"], None, "gif.imagined: expected an integer in [0, "),
    ("eval", ["run=myrun", "checkpoint=../../etc"], None, "checkpoint: expected 'latest' or a checkpoint name"),
    ("eval", ["run=myrun", "checkpoint=00000099"], None, "no checkpoint '00000099'"),
    ("eval", ["run=myrun", "episodes=0"], None, "episodes: expected a finite value > 0"),
    ("eval", ["run=myrun", "split=test"], None, "split: expected one of train, validation, heldout"),
    ("eval", ["run=myrun", "deterministic=maybe"], None, "deterministic"),
    ("eval", ["run=myrun", "gif.fps=0"], None, "gif.fps"),
    ("eval", ["run=myrun", "seed=-1"], None, "seed: expected an integer in [0, 2147483647]"),
    ("eval", ["run=myrun", "seed=4294967296"], None, "seed: expected an integer in [0, 2147483647]"),
    ("eval", ["run=myrun", "data.max_steps=-1"], None, "data.max_steps: expected"),
    ("eval", ["run=myrun", "data.type=cartpole"], None, "data.type: an evaluation plays the run's own env"),
    ("eval", ["run=myrun", "data.bogus=1"], None, "data.bogus: unknown key"),
    ("eval", ["run=myrun"], eval_dir_is_a_file, "run: "),
    ("eval", ["run=myrun", "model.hidden_sizes=[8]"], None, "model"),
    ("eval", ["run=myrun"], truncate_model, "truncated or corrupted"),
    ("eval", ["run=myrun"], pickle_model, "not a valid safetensors file"),
    ("eval", ["run=myrun"], pickle_state, "not a valid safetensors file"),
    # --- mmrl compress and eval: paths, sizes, numbers
    ("compress", ["teacher=myrun", "compression=prune", "run_name=x/../../../out/escaped"], None, "run_name: expected a name"),
    ("compress", ["teacher=myrun", "compression=prune", "run_name=.."], None, "run_name: expected a name"),
    ("compress", ["teacher=myrun", "compression=prune", "run_name=/abs/path"], None, "run_name: expected a name"),
    ("compress", ["teacher=myrun", "compression=prune", "run_name=.hidden"], None, "run_name: expected a name"),
    ("compress", ["teacher=myrun", "compression=prune", "run_name=" + "n" * 101], None, "run_name: expected a name of at most 100"),
    ("compress", ["teacher=" + "t" * 10_000, "compression=prune"], None, "teacher: a path of 1"),
    ("compress", ["teacher=" + "t/" * 5_000, "compression=prune"], None, "teacher: a path of 1"),
    ("compress", ["teacher=myrun/" + "c" * 300, "compression=prune"], None, "teacher: a path part of 300 bytes"),
    ("compress", ["teacher=myrun", "compression=prune", "out_dir=" + "o" * 10_000], None, "out_dir: a path of 1"),
    ("compress", ["teacher=myrun", "compression=prune", "out_dir=out/" + "o" * 256], None, "out_dir: a path part of 256 bytes"),
    ("compress", ["teacher=latest", "compression=prune", "runs_root=" + "r" * 10_000], None, "runs_root: a path of 1"),
    ("compress", ["teacher=myrun", "compression=prune", "out_dir=somefile.txt"], a_file, "out_dir: somefile.txt exists and is not a directory"),
    ("compress", ["teacher=myrun", "compression=prune", "report.episodes=100000000000"], None, "report.episodes: expected an integer of at most"),
    ("compress", ["teacher=myrun", "compression=prune", "report.latency_batch=100000000000"], None, "report.latency_batch: expected an integer of at most"),
    ("compress", ["teacher=myrun", "compression=prune", "report.latency_repeats=1000000000"], None, "report.latency_repeats: expected an integer in [1, 10000]"),
    ("compress", ["teacher=myrun", "compression=prune", "report.latency_threads=0"], None, "report.latency_threads: expected an integer in [1, 1024]"),
    ("compress", ["teacher=myrun", "compression=prune", "total_steps=99999999999999999999"], None, "total_steps: expected an integer of at most"),
    ("compress", ["teacher=myrun", "compression=prune", "seed=4294967296"], None, "seed: expected an integer in [0, 2147483647]"),
    ("compress", ["teacher=myrun", "compression=distill", "model=mlp", "compression.batch_size=64", "model.hidden_sizes=[100000,100000]"],
     None, "model.hidden_sizes: the model has"),
    ("compress", ["teacher=myrun", "compression=prune", "compression.sparsity=nan"], None, "compression.sparsity"),
    ("compress", ["teacher=myrun", "compression=lowrank", "compression.energy=nan"], None, "compression.energy"),
    ("compress", ["teacher=myrun", "compression=distill", "model=mlp", "compression.temperature=inf"], None, "compression.temperature: expected a finite value > 0"),
    ("compress", ["teacher=myrun", "compression=distill", "model=mlp", "compression.lr=nan"], None, "compression.lr: expected a finite value > 0"),
    ("compress", ["teacher=myrun", "compression=distill", "model=mlp", "compression.value_coef=-inf"], None, "compression.value_coef"),
    ("compress", ["teacher=myrun", "compression=lowrank"], None, "compression=lowrank: nothing to factorise"),
    ("compress", ["teacher=myrun", "compression=lowrank", "compression.min_size=0", "compression.rank=64"], None,
     "compression.rank: rank 64 saves no parameters"),
    ("compress", ["teacher=myrun", "compression=lowrank", "compression.min_size=0", "compression.energy=1.0"], None,
     "compression.energy: keeping 1 of the energy needs too high a rank"),
    ("train", ["data=cartpole", "model=mlp", "compression=lowrank", "init_from=myrun"], None, "compression=lowrank: nothing to factorise"),
    ("train", ["run_name=" + "n" * 101], None, "run_name: expected a name of at most 100"),
    ("eval", ["run=" + "r" * 10_000], None, "run: a path of 1"),
    ("eval", ["run=myrun/" + "c" * 300], None, "run: a path part of 300 bytes"),
    ("eval", ["run=latest", "runs_root=" + "r" * 10_000], None, "runs_root: a path of 1"),
    ("eval", ["run=myrun", "episodes=1000000000000"], None, "episodes: expected an integer of at most"),
    ("eval", ["run=myrun", "gif.fps=100000000"], None, "gif.fps: expected an integer in [1, 100]"),
    ("eval", ["run=myrun", "gif.fps=101"], None, "gif.fps: expected an integer in [1, 100]"),
    ("eval", ["run=myrun", "gif.episodes=100000000"], None, "gif.episodes: expected an integer in [0, 64]"),
    ("eval", ["run=myrun", "gif.episodes=-1"], None, "gif.episodes: expected an integer in [0, 64]"),
    ("eval", ["run=myrun", "gif.max_steps=10000000000"], None, "gif.max_steps: expected an integer of at most"),
    ("eval", ["run=myrun", "gif.max_steps=0"], None, "gif.max_steps: expected a finite value > 0"),
    ("eval", ["run=myrun", "episodes=nan"], None, "episodes"),
    ("eval", ["run=myrun", "gif.fps=inf"], None, "gif.fps"),
    ("eval", ["run=myrun", "seed=nan"], None, "seed"),
    ("eval", ["run=myrun", "hardware.threads=100000000000"], None, "hardware.threads"),
    # --- mmrl sweep: storages, secrets, names, sizes
    # (a storage password shows as *** in the one line: the expected text proves it is masked)
    ("sweep", ["hpo.storage=postgresql://user:s3cr3t-pw@db.example/optuna"], None,
     "hpo.storage: postgresql://user:***@db.example/optuna needs the database driver"),
    ("sweep", ["hpo.storage=mysql+pymysql://root:s3cr3t-pw@db.example:3306/optuna"], None,
     "hpo.storage: mysql+pymysql://root:***@db.example:3306/optuna needs the database driver 'pymysql'"),
    ("sweep", ["hpo.storage=redis://user:s3cr3t-pw@cache/0"], None, "hpo.storage: unknown database 'redis' in redis://user:***@cache/0"),
    ("sweep", ["hpo.storage=postgresql+nodriver://user@db.example/optuna"], None, "hpo.storage: unknown database 'postgresql+nodriver'"),
    ("sweep", ["hpo.storage=postgresql://user:s3cr3t-pw@db.example:notaport/optuna"], None,
     "hpo.storage: postgresql://user:***@db.example:notaport/optuna is not a database URL"),
    ("sweep", ["hpo.storage=://db.example"], None, "hpo.storage: ://db.example is not a database URL"),
    ("sweep", ["hpo.storage=redis"], None, "hpo.storage: expected null, sqlite, journal or an RDB URL"),
    ("sweep", ["hpo.storage=sqlite:////proc/mmrl-study.db"], None, "hpo.storage: the SQLite file /proc/mmrl-study.db cannot be created"),
    ("sweep", ["hpo.storage=sqlite:///nodir/study.db"], None, "hpo.storage: the SQLite file nodir/study.db needs an existing directory"),
    ("sweep", ["hpo.storage=sqlite:///somefile.txt"], a_file, "hpo.storage: somefile.txt is not an SQLite database"),
    ("sweep", ["hpo.storage=sqlite:///emptydir"], empty_dir, "hpo.storage: emptydir exists and is not a file"),
    ("sweep", ["hpo.storage=sqlite://"], None, "hpo.storage: sqlite:// is an in-memory database"),
    ("sweep", ["hpo.study_name=" + "s" * 10_000], None, "hpo.study_name: expected at most 200 characters"),
    ("sweep", ["sweep_dir=" + "d" * 10_000], None, "sweep_dir: the directory name"),
    ("sweep", ["runs_root=" + "r/" * 3_000], None, "runs_root: the sweep directory"),
    ("sweep", ["hpo.storage=sqlite:///" + "f" * 10_000 + ".db"], None, "hpo.storage: the SQLite file"),
    ("sweep", ["hpo.heartbeat_seconds=nan"], None, "hpo.heartbeat_seconds: expected a finite value > 0"),
    ("sweep", ["hpo.grace_seconds=inf"], None, "hpo.grace_seconds: expected a finite value > 0"),
    ("sweep", ["hpo.budget.wall_seconds=inf"], None, "hpo.budget.wall_seconds: expected a finite value > 0"),
    ("sweep", ["hpo.space.algo.lr.high=inf"], None, "hpo.space.algo.lr.high: expected a finite number"),
    ("sweep", ["hpo.space.algo.gamma.choices=[0.9,nan]"], None, "hpo.space.algo.gamma.choices: expected finite values"),
    ("sweep", ["hpo.first_seed=nan"], None, "hpo.first_seed"),
    ("sweep", ["hpo.pruner.warmup_steps=inf"], None, "hpo.pruner.warmup_steps"),
    ("sweep", ["hpo.budget.trials=99999999999999999999"], None, "hpo.budget.trials: expected an integer in [1, 1000000]"),
    ("sweep", ["hpo.budget.total_steps=9223372036854775808"], None, "hpo.budget.total_steps: expected an integer in"),
    ("sweep", ["hpo.n_workers=1000000"], None, "hpo.n_workers: expected an integer in [1, 256]"),
    ("sweep", ["hpo.sampler.n_startup_trials=10000000"], None, "hpo.sampler.n_startup_trials: expected an integer in"),
    ("sweep", ["hpo.retrain.top_k=1000000"], None, "hpo.retrain.top_k: expected an integer in [0, 1000]"),
    # --- train: tampered checkpoints, long paths, hydra keys, settings that cannot work
    ("train", ["resume=myrun"], meta_damage("progress_update_text", progress(update="abc")), "progress.update is 'abc'"),
    ("train", ["resume=myrun"], meta_damage("progress_steps_negative", progress(steps=-5)), "progress.steps is -5"),
    ("train", ["resume=myrun"], meta_damage("progress_steps_float", progress(steps=1e30)), "progress.steps is 1e+30"),
    ("train", ["resume=myrun"], meta_damage("progress_steps_huge", progress(steps=10**30)), "progress.steps is 1000"),
    ("train", ["resume=myrun"], meta_damage("progress_time_nan", progress(wall_seconds=float("nan"))), "progress.wall_seconds"),
    ("train", ["resume=myrun"], meta_damage("progress_evaluations_text", progress(evaluations="x")), "progress.evaluations"),
    ("train", ["resume=myrun"], meta_damage("progress_other_update", progress(update=7)), "progress.update is 7"),
    ("train", ["resume=myrun"], meta_damage("no_progress", lambda m: m["state"].pop("progress")), "the training state has no progress"),
    ("train", ["resume=myrun"], meta_damage("no_algo_state", lambda m: m["state"].pop("algo")), "the training state has no algo"),
    ("train", ["resume=myrun"], meta_damage("no_state", lambda m: m.pop("state")), "the training state is NoneType"),
    ("train", ["resume=myrun"], meta_damage("update_text", lambda m: m.update(update="x")), "update is 'x'"),
    ("train", ["resume=myrun"], meta_damage("update_negative", lambda m: m.update(update=-1)), "update is -1"),
    ("train", ["resume=myrun"], meta_damage("policy_file_swapped", lambda m: m["modules"].update(policy="state.safetensors")),
     "names module files"),
    ("train", ["resume=myrun"], meta_damage("python_rng_short", lambda m: m["state"]["rng"]["python"][1].pop()),
     "the saved global RNG states are not valid"),
    ("train", ["resume=myrun"], meta_damage("python_rng_text", lambda m: m["state"]["rng"].update(python="x")),
     "the saved global RNG states are not valid"),
    ("train", ["resume=myrun"], meta_damage("numpy_rng_position", lambda m: m["state"]["rng"]["numpy"].update(pos=10**6)),
     "rng.numpy is not an MT19937 state"),
    ("train", ["resume=myrun"], meta_damage("numpy_rng_key", lambda m: m["state"]["rng"]["numpy"].update(key=[-1] * 624)),
     "rng.numpy.key"),
    ("train", ["resume=myrun"], meta_damage("world_size_zero", lambda m: m["state"].update(world_size=0)), "world_size"),
    ("train", ["resume=myrun"], meta_damage("unknown_tensor", lambda m: m["state"]["rng"].update(torch={"__tensor__": "nope"})),
     "refers to a tensor 'nope' that is not stored"),
    ("train", ["resume=myrun"], meta_damage("items_not_pairs", lambda m: m["state"]["algo"]["optimizer"].update(state={"__items__": 5})),
     "is not a list of [key, value] pairs"),
    ("train", ["resume=myrun"], meta_damage("clock_negative", lambda m: m["state"]["algo"]["clock"].update(updates_done=-1)),
     "algo.clock.updates_done is -1, expected an integer >= 0"),
    ("train", ["resume=myrun"], meta_damage("skipped_text", lambda m: m["state"]["algo"].update(skipped_steps="x")),
     "algo.skipped_steps is 'x'"),
    ("train", ["resume=myrun"], meta_damage("lr_text", lambda m: m["state"]["algo"]["optimizer"]["param_groups"][0].update(lr="x")),
     "algo.optimizer.param_groups.0.lr is 'x'"),
    ("train", ["resume=myrun"], meta_damage("params_short", lambda m: m["state"]["algo"]["optimizer"]["param_groups"][0]["params"].pop()),
     "algo.optimizer.param_groups.0.params is not a list of"),
    ("train", ["resume=myrun"], state_damage("torch_rng_float", "state.rng.torch", lambda t: t.float()),
     "RNG state must be a torch.ByteTensor"),
    ("train", ["resume=myrun"], state_damage("shuffle_rng_short", "state.algo.generator", lambda t: t[:100].clone()),
     "algo.generator is a torch.uint8 tensor of shape [100]"),
    ("train", ["resume=myrun"], state_damage("action_rng_float", "state.collector.action_rng", lambda t: t.float()),
     "collector.action_rng is a torch.float32 tensor"),
    ("train", ["resume=myrun"], state_damage("adam_moment_shape", "state.algo.optimizer.state.0.exp_avg", lambda t: t.new_zeros(3)),
     "exp_avg has shape [3] where its parameter has"),
    ("train", ["resume=myrun"], state_damage("adam_step_vector", "state.algo.optimizer.state.0.step", lambda t: t.new_zeros(5)),
     "step has shape [5] where its parameter has"),
    ("train", ["resume=myrun"], state_damage("env_state_shape", "state.collector.env.state", lambda t: t[:3].clone()),
     "collector.env.state is a torch.float32 tensor of shape [3, 4]"),
    ("train", ["resume=myrun"], state_damage("env_steps_float", "state.collector.env.steps", lambda t: t.float()),
     "collector.env.steps is a torch.float32 tensor"),
    ("train", ["resume=myrun"], state_damage("observation_shape", "state.collector.obs.vector", lambda t: t.new_zeros(4, 7)),
     "collector.obs.vector is a torch.float32 tensor of shape [4, 7]"),
    ("train", ["resume=myrun"], model_float64, "is F64 in the checkpoint, F32 in the model"),
    ("train", ["resume=myrun"], broken_structure, "its tensor shapes do not make a working"),
    ("train", ["resume=myrun"], inconsistent_sparse, "the compact sparse tensor x is inconsistent"),
    ("train", ["resume=myrun"], run_in_use, "is in use by another mmrl process (pid"),
    ("train", ["runs_root=" + "x" * 10_000], None, "runs_root: a path of 1"),
    ("train", ["runs_root=x/" + "x" * 10_000 + "/y"], None, "runs_root: a path of 1"),
    ("train", ["runs_root=" + "x" * 300], None, "runs_root: a path part of 300 bytes"),
    ("train", ["-m", "seed=1,2", "runs_root=" + "x" * 10_000], None, "runs_root: a path of 1"),
    ("train", ["resume=" + "x" * 10_000], None, "resume: a path of 1"),
    ("train", ["resume=myrun/" + "c" * 300], None, "resume: a path part of 300 bytes"),
    ("train", ["resume=latest", "runs_root=" + "x" * 10_000], None, "runs_root: a path of 1"),
    ("train", ["data=cartpole", "model=mlp", "init_from=" + "x" * 10_000], None, "init_from: a path of 1"),
    ("train", ["data=cartpole", "model=mlp", "compression=kickstart", "teacher=" + "x" * 10_000], None, "teacher: a path of 1"),
    ("train", ["hydra.run.dir=elsewhere"], None, "hydra.run.dir: cannot be overridden"),
    ("train", ["hydra.output_subdir=.hydra"], None, "hydra.output_subdir: cannot be overridden"),
    ("train", ["-m", "seed=1,2", "hydra.sweep.dir=elsewhere"], None, "hydra.sweep.dir: cannot be overridden"),
    ("train", ["hydra.sweep.subdir=x"], None, "hydra.sweep.subdir: cannot be overridden"),
    ("train", ["hydra.job.chdir=true"], None, "hydra.job.chdir: cannot be overridden"),
    ("train", ["hydra/job_logging=default"], None, "hydra/job_logging: cannot be overridden"),
    ("train", ["resume=myrun", "hydra.run.dir=elsewhere"], None, "hydra.run.dir: cannot be overridden"),
    ("train", ["data=cartpole", "model=mlp", "hardware=ddp", "hardware.device=cpu", "hardware.backend=nccl"], None,
     "hardware.backend: nccl needs CUDA devices"),
    ("train", ["data=gym", "data.env_id=Acrobot-v1", "model=mlp", "init_from=myrun"], None,
     "its env must give the same observations and actions"),
    ("train", ["--cfg", "nonsense"], None, "--cfg/-c: invalid choice: 'nonsense'"),
    ("train", ["-c"], None, "--cfg/-c: expected one argument"),
    ("train", ["--info", "bogus"], None, "--info/-i: invalid choice: 'bogus'"),
    ("train", ["algo.total_steps=1000"], None, "algo.total_steps: unknown key (did you mean total_steps=...?)"),
    ("train", ["algo.n_envs=8"], None, "algo.n_envs: unknown key (did you mean rollout.n_envs=...?)"),
    ("train", ["algo.n_steps=8"], None, "algo.n_steps: unknown key (did you mean rollout.n_steps=...?)"),
    ("eval", ["run=myrun"], model_float64, "is F64 in the checkpoint, F32 in the model"),
    ("eval", ["run=myrun"], broken_structure, "its tensor shapes do not make a working"),
    ("eval", ["run=myrun"], inconsistent_sparse, "the compact sparse tensor x is inconsistent"),
    ("eval", ["run=myrun"], meta_damage("update_text", lambda m: m.update(update="x")), "update is 'x'"),
    ("eval", ["run=myrun", "hydra.run.dir=elsewhere"], None, "hydra.run.dir: cannot be overridden"),
    ("eval", ["--cfg", "nonsense"], None, "--cfg/-c: invalid choice"),
    ("compress", ["teacher=myrun", "compression=prune"], model_float64, "teacher: "),
    ("compress", ["teacher=myrun", "compression=prune"], broken_structure, "its tensor shapes do not make a working"),
    ("compress", ["teacher=myrun", "compression=prune"], meta_damage("no_state", lambda m: m.pop("state")),
     "the training state is NoneType"),
    ("compress", ["teacher=myrun", "compression=prune", "hydra.output_subdir=.hydra"], None,
     "hydra.output_subdir: cannot be overridden"),
    ("nosuchcommand", [], None, "unknown command"),
]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("command,args,damage,expected", CASES, ids=[f"{c}:{' '.join(a)}:{d.__name__ if d else ''}"
                                                                     for c, a, d, _ in CASES])
def test_hostile_input_is_one_line_exit_2_and_creates_nothing(trained_run, tmp_path, monkeypatch, capsys,
                                                              command, args, damage, expected):
    shutil.copytree(trained_run, tmp_path / "myrun")
    if damage is not None:
        damage(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([command, *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mmrl {command}: error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(tmp_path) == before  # nothing created, nothing changed
    assert not (tmp_path / MARKER).exists()


def test_there_are_at_least_100_hostile_cases():
    assert len(CASES) >= 100
