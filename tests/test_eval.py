"""`mmrl eval`: results.json with 95% confidence intervals, a printed table, a well-formed GIF."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from mmrl_cli import trainer
from mmrl_cli.checkpoint import sha256
from mmrl_cli.cli import main
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import validate
from mmrl_cli.evaluation import mean_interval, wilson_interval

TINY = ["rollout.n_envs=4", "rollout.n_steps=16", "algo.batch_size=32", "algo.n_epochs=1", "eval.episodes=2",
        "monitor.progress=false", "monitor.tensorboard=false"]
RUNS = {
    "goto": ["total_steps=128"],
    "cartpole": ["data=cartpole", "model=mlp", "total_steps=128"],
    "babyai": ["data=gym", "data.env_id=BabyAI-GoToRedBallGrey-v0", "model=cnn", "total_steps=64"],
    "doorkey-with-mission": ["data=gym", "data.env_id=MiniGrid-DoorKey-5x5-v0", "model=cnn", "total_steps=64",
                             "data.constant_mission=keep"],
}


def trained(tmp_path_factory, name: str) -> Path:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("train", overrides=TINY + RUNS[name]))
    run_dir = tmp_path_factory.mktemp(name)
    trainer.train(cfg, run_dir)
    (run_dir / "config.yaml").write_text("# written by the test\n")
    return run_dir


def check_results(run_dir: Path, episodes: int) -> dict:
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["episodes"] == episodes
    low, high = results["success_ci95"]
    assert 0.0 <= low <= results["success_rate"] <= high <= 1.0
    low, high = results["return_ci95"]
    assert low <= results["return_mean"] <= high
    return results


def check_gif(path: Path, episodes: int) -> None:
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.info.get("loop") == 0 and gif.n_frames >= 2 * episodes
        assert max(gif.size) >= 240
        first = np.asarray(gif.convert("RGB"))
    band = first[:22]
    assert (band > 200).any()  # the instruction is written on the top band


def test_eval_of_a_goto_run_through_the_cli(tmp_path_factory, run_mmrl):
    run_dir = trained(tmp_path_factory, "goto")
    result = run_mmrl("eval", f"run={run_dir}", "episodes=40", "gif.episodes=2")
    assert result.returncode == 0, result.stderr
    assert "success rate" in result.stdout and "95% CI" in result.stdout
    results = check_results(run_dir, 40)
    assert results["split"] == "heldout" and results["checkpoint"] == "00000002"
    # By default argmax and sampled actions, side by side on the same levels.
    assert results["deterministic"] is None and results["actions"] == "argmax and sampled"
    sampled = results["sampled"]
    assert sampled["episodes"] == 40 and 0.0 <= sampled["success_ci95"][0] <= sampled["success_rate"] <= 1.0
    assert "success rate (argmax actions)" in result.stdout and "success rate (sampled actions)" in result.stdout
    check_gif(run_dir / "eval" / "episodes.gif", 2)
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == ["episodes.gif", "results.json"]


def test_eval_sampled_actions_on_training_levels_is_reproducible(tmp_path_factory, monkeypatch):
    run_dir = trained(tmp_path_factory, "cartpole")
    args = ["eval", f"run={run_dir}", "episodes=6", "split=train", "deterministic=false", "checkpoint=00000002",
            "gif.episodes=1", "gif.max_steps=20"]
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    main(args)
    first = check_results(run_dir, 6)
    main(args)
    second = check_results(run_dir, 6)
    assert first == second and first["deterministic"] is False and first["split"] == "train"
    assert "sampled" not in first and first["actions"] == "sampled"
    check_gif(run_dir / "eval" / "episodes.gif", 1)


@pytest.mark.parametrize("episodes,split", [(100, "validation"), (97, "heldout")])
def test_eval_plays_exactly_the_episodes_asked_for(tmp_path_factory, monkeypatch, episodes, split):
    """CartPole evaluates on 64 envs: 100 and 97 are not multiples of that, and still exactly counted."""
    run_dir = trained(tmp_path_factory, "cartpole")
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    main(["eval", f"run={run_dir}", f"episodes={episodes}", f"split={split}", "gif.episodes=0"])
    assert check_results(run_dir, episodes)["split"] == split


def test_eval_of_a_gymnasium_run_with_missions(tmp_path_factory, monkeypatch):
    pytest.importorskip("minigrid")
    run_dir = trained(tmp_path_factory, "babyai")
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    main(["eval", f"run={run_dir}", "episodes=4", "gif.episodes=1", "gif.max_steps=10"])
    check_results(run_dir, 4)
    check_gif(run_dir / "eval" / "episodes.gif", 1)


def test_a_run_saved_before_constant_missions_were_dropped_still_evaluates(tmp_path_factory, monkeypatch):
    """Such runs fed DoorKey's constant mission: a config without `data.constant_mission` means keep."""
    pytest.importorskip("minigrid")
    run_dir = trained(tmp_path_factory, "doorkey-with-mission")
    for config in run_dir.glob("checkpoints/*/config.yaml"):
        text = config.read_text()
        assert "constant_mission: keep" in text
        config.write_text(text.replace("  constant_mission: keep\n", ""))
        meta = json.loads((config.parent / "meta.json").read_text())  # as that version wrote it: checksums match
        meta["sha256"]["config.yaml"] = sha256(config)
        (config.parent / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    main(["eval", f"run={run_dir}", "episodes=2", "gif.episodes=0"])
    check_results(run_dir, 2)


def test_confidence_intervals():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    low, high = wilson_interval(100, 100)  # never above 1, still a real interval
    assert high == 1.0 and 0.95 < low < 0.97
    for n in (200, 500, 1000):  # the interval holds the rate itself, at 0 and 1 too (no rounding below it)
        assert wilson_interval(n, n)[1] >= 1.0 and wilson_interval(0, n)[0] <= 0.0
    import torch

    low, high = mean_interval(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    assert (low + high) / 2 == pytest.approx(2.5) and high - low == pytest.approx(2 * 1.959964 * 1.2910 / 2, rel=1e-3)


def test_a_checkpoint_of_mmrl_0_1_still_evaluates(tmp_path, monkeypatch, capsys):
    """tests/data/run-format1 was written by mmrl 0.1 (format 1, loop settings under `algo`)."""
    import shutil

    run_dir = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "run-format1", run_dir)
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    main(["eval", f"run={run_dir}", "episodes=8", "gif.episodes=0"])
    assert check_results(run_dir, 8)["checkpoint"] == "00000002"
    assert "mmrl 0.1 checkpoint: its config was migrated" in capsys.readouterr().err
