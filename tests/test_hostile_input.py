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
from mmrl_cli.cli import CONF_DIR, main
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


CASES = [
    # --- mmrl train: keys, types, values
    ("train", ["foo=1"], None, "foo: unknown key"),
    ("train", ["algo.lrr=1"], None, "algo.lrr"),
    ("train", ["+algo.extra=1"], None, "algo.extra: unknown key"),
    ("train", ["algo.lr=abc"], None, "algo.lr"),
    ("train", ["rollout.n_envs=2.5"], None, "rollout.n_envs"),
    ("train", ["rollout.n_envs=0"], None, "rollout.n_envs: expected a finite value > 0"),
    ("train", ["algo.lr=-1"], None, "algo.lr: expected a finite value > 0"),
    ("train", ["algo.lr=nan"], None, "algo.lr: expected a finite value > 0"),
    ("train", ["algo=a2c", "algo.eps=inf"], None, "algo.eps: expected a finite value > 0"),
    ("train", ["algo=a2c", "algo.optimizer=sgd"], None, "algo.optimizer: expected one of rmsprop, adam"),
    ("train", ["algo=a2c", "algo.clip_range=0.2"], None, "algo.clip_range: unknown key"),
    ("train", ["algo.ent_coef=nan"], None, "algo.ent_coef: expected a finite value >= 0"),
    ("train", ["total_steps=0"], None, "total_steps: expected a finite value > 0"),
    ("train", ["exp=nope"], None, "exp=nope: unknown option"),
    ("train", ["data.grid_size=2", "data.num_distractors=0"], None, "data.grid_size: a 2x2 grid"),
    ("train", ["algo.gamma=1.5"], None, "algo.gamma"),
    ("train", ["algo.batch_size=100000"], None, "algo.batch_size"),
    ("train", ["algo.lr_schedule=cosine"], None, "algo.lr_schedule"),
    ("train", ["model.heads=5"], None, "model.heads"),
    ("train", ["data.grid_size=1"], None, "data.grid_size"),
    ("train", ["eval.episodes=0"], None, "eval.episodes"),
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
    ("eval", ["run=myrun", "checkpoint=../../etc"], None, "checkpoint: expected 'latest' or a checkpoint name"),
    ("eval", ["run=myrun", "checkpoint=00000099"], None, "no checkpoint '00000099'"),
    ("eval", ["run=myrun", "episodes=0"], None, "episodes: expected a finite value > 0"),
    ("eval", ["run=myrun", "split=test"], None, "split: expected one of train, validation, heldout"),
    ("eval", ["run=myrun", "deterministic=maybe"], None, "deterministic"),
    ("eval", ["run=myrun", "gif.fps=0"], None, "gif.fps"),
    ("eval", ["run=myrun", "seed=-1"], None, "seed: expected an integer in [0, 2147483647]"),
    ("eval", ["run=myrun", "seed=4294967296"], None, "seed: expected an integer in [0, 2147483647]"),
    ("eval", ["run=myrun"], eval_dir_is_a_file, "run: "),
    ("eval", ["run=myrun", "model.hidden_sizes=[8]"], None, "model"),
    ("eval", ["run=myrun"], truncate_model, "truncated or corrupted"),
    ("eval", ["run=myrun"], pickle_model, "not a valid safetensors file"),
    ("eval", ["run=myrun"], pickle_state, "not a valid safetensors file"),
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
