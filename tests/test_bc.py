"""Behaviour cloning (algo=bc): its loss learns, its runs resume exactly, and every bad dataset
is refused before anything is created."""

import shutil
from pathlib import Path

import pytest
import torch

from mmrl_cli import trainer
from mmrl_cli.algos.bc import bc_loss, returns_to_go
from mmrl_cli.checkpoint import find_checkpoint, read_weights
from mmrl_cli.cli import main
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import GotoDataConfig, MlpConfig
from mmrl_cli.demos.command import run_demos
from mmrl_cli.demos.dataset import DemoDataset
from mmrl_cli.demos.settings import DemosConfig
from mmrl_cli.distributions import Categorical
from mmrl_cli.models import build_policy

BC = ["algo=bc", "model=cnn", "algo.updates=12", "algo.batch_size=32", "algo.eval_every_updates=6", "eval.episodes=8",
      "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1", "checkpoint.every_updates=4"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    """60 shortest-path goto demonstrations in 3 shards (never modified: tests copy it)."""
    root = tmp_path_factory.mktemp("bc")
    typed = DemosConfig(data=GotoDataConfig(), episodes=60, shard_episodes=20, runs_root=str(root),
                        out=str(root / "demos"), progress=False)
    typed.check()
    run_demos(typed)
    return Path(typed.out)


def test_returns_to_go_restart_at_every_episode_end():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.5])
    dones = torch.tensor([False, False, True, False, True])
    assert torch.allclose(returns_to_go(rewards, dones, 0.5), torch.tensor([0.25, 0.5, 1.0, 0.25, 0.5]))


def test_the_bc_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    spec = {"vector": ((6,), torch.float32)}
    policy = build_policy(MlpConfig(), spec, 4)
    batch = {"obs": {"vector": torch.randn(64, 6)}, "actions": torch.randint(0, 4, (64,)), "returns_to_go": torch.rand(64)}
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        params, values = policy(batch["obs"])
        terms = bc_loss(policy.distribution(params), values, batch, vf_coef=0.5, ent_coef=0.0)
        loss = terms["loss_bc"] + terms["loss_value"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(terms["loss_bc"].detach()))
    assert losses[-1] < 0.3 * losses[0]
    assert float(terms["accuracy"]) > 0.9  # it memorises 64 labels
    assert isinstance(policy.distribution(params), Categorical)


def test_bc_trains_from_demos_and_resumes_bit_identically(demos, tmp_path):
    overrides = [*BC, f"algo.demos={demos}"]
    whole = trainer.train(compose_train_config(overrides), tmp_path / "whole")
    assert whole["steps"] == 0 and whole["updates"] == 12 and whole["heldout_success_rate"] is not None

    class StopAt6:
        def on_update(self, progress, metrics):
            if progress.update == 6:
                raise trainer.StopTraining("stop at update 6")

    stopped = trainer.train(compose_train_config(overrides), tmp_path / "split", callbacks=[StopAt6()])
    assert stopped["updates"] == 6 and stopped["stopped_by"]
    checkpoint, _ = find_checkpoint(tmp_path / "split")
    trainer.train(compose_train_config(overrides), tmp_path / "split", resume_from=checkpoint)
    a, b = read_weights(tmp_path / "whole" / "model.safetensors"), read_weights(tmp_path / "split" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_a_bc_run_fine_tunes_it_with_ppo(demos, tmp_path):
    bc = trainer.train(compose_train_config([*BC, f"algo.demos={demos}", "algo.updates=4"]), tmp_path / "bc")
    assert bc["updates"] == 4
    rl = trainer.train(compose_train_config(["model=cnn", f"init_from={tmp_path / 'bc'}", "total_steps=256", "rollout.n_envs=8",
                                             "rollout.n_steps=16", "algo.batch_size=64", "eval.episodes=8",
                                             "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]),
                       tmp_path / "rl")
    assert rl["steps"] == 256


def damaged(demos: Path, tmp_path: Path, how: str) -> Path:
    """A copy of the dataset with one kind of damage."""
    path = Path(shutil.copytree(demos, tmp_path / "copy"))
    if how == "truncated":
        shard = path / "shard-00001.safetensors"
        shard.write_bytes(shard.read_bytes()[:500])
    elif how == "missing-shard":
        (path / "shard-00002.safetensors").unlink()
    elif how == "no-manifest":
        (path / "manifest.json").unlink()
    return path


CASES = [
    ("missing", [], r"algo\.demos: .*: no such directory"),
    ("truncated", [], r"algo\.demos: .*shard-00001.safetensors is truncated or changed"),
    ("missing-shard", [], r"algo\.demos: .*shard-00002.safetensors is missing"),
    ("no-manifest", [], r"algo\.demos: .*no manifest.json"),
    ("other-env", ["data.num_distractors=3"], r"algo\.demos: .*recorded for another env: .*num_distractors"),
    ("other-shape", ["data.tile_size=4"], r"algo\.demos: .*recorded for another env"),
    ("small", ["algo.batch_size=100000"], r"algo\.demos: .*fewer than one minibatch \(algo\.batch_size=100000\)"),
    ("small-fraction", ["algo.fraction=0.02", "algo.batch_size=64"], r"algo\.demos: .*: the 1 episode used hold \d+ transitions"),
]


@pytest.mark.parametrize("how,extra,message", CASES, ids=[c[0] for c in CASES])
def test_a_bad_dataset_is_one_line_exit_2_and_creates_nothing(demos, tmp_path, monkeypatch, capsys, how, extra, message):
    import re

    path = tmp_path / "nowhere" if how == "missing" else damaged(demos, tmp_path, how) if how in (
        "truncated", "missing-shard", "no-manifest") else demos
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *BC, f"algo.demos={path}", *extra])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert re.search(message, err.removeprefix("mmrl train: error: ")), err
    assert not (tmp_path / "runs").exists()


def test_a_fraction_trains_on_the_first_episodes_only(demos):
    assert DemoDataset(demos, fraction=0.5).num_episodes == 30
