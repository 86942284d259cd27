"""`mmrl compare`: reports from run directories alone; statistics against rliable called directly;
curves on different step grids aligned; bad input as one line and exit code 2."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from mmrl_cli import trainer
from mmrl_cli.cli import main
from mmrl_cli.compare.command import run_compare
from mmrl_cli.compare.records import load_records
from mmrl_cli.compare.report import compare
from mmrl_cli.compare.settings import validate_compare
from mmrl_cli.compare.stats import aggregate_intervals, align, improvement_intervals, mean_band, profiles
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import validate

TINY = ["data=cartpole", "model=mlp", "total_steps=256", "rollout.n_envs=4", "rollout.n_steps=16", "eval.every_steps=64",
        "eval.episodes=2", "monitor.progress=false", "monitor.tensorboard=false"]


def fake_run(root: Path, name: str, algo: str, curve: list[tuple[int, float, float]], heldout: float | None,
             data: dict | None = None, reached_stop_at: bool = False) -> Path:
    """A run directory as the trainer leaves it: config.yaml and summary.json with its evaluations."""
    run = root / name
    run.mkdir(parents=True)
    config = {"algo": {"type": algo}, "data": data or {"type": "goto"}, "seed": 1}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    evaluations = [{"step": s, "wall_seconds": w, "validation": {"success_rate": v, "return_mean": v}} for s, w, v in curve]
    summary = {"heldout_success_rate": heldout, "heldout_return": heldout, "evaluations": evaluations,
               "reached_stop_at": reached_stop_at}
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def settings(runs_root: Path, **overrides) -> object:
    return validate_compare({"runs": [str(runs_root)], "runs_root": str(runs_root), **overrides})


def test_compare_of_real_runs_through_the_cli(tmp_path, run_mmrl):
    for algo in ("ppo", "a2c"):
        for seed in (1, 2):
            overrides = TINY + [f"algo={algo}", f"seed={seed}"] + (["algo.batch_size=32"] if algo == "ppo" else [])
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = validate(compose("train", overrides=overrides))
            run_dir = tmp_path / "runs" / f"{algo}-{seed}"
            trainer.train(cfg, run_dir)
    # Once through the installed command line, as a user runs it.
    result = run_mmrl("compare", f"runs={tmp_path / 'runs'}", f"runs_root={tmp_path / 'runs'}", "metric=return",
                      "target=20", "reps=500", "out=" + str(tmp_path / "runs" / "report"))
    assert result.returncode == 0, result.stderr
    assert "IQM" in result.stdout and "a2c" in result.stdout and "ppo" in result.stdout
    out = tmp_path / "runs" / "report"
    assert {"compare.json", "compare.md", "curves_steps.png", "curves_wall.png", "aggregates.png", "improvement.png",
            "profiles.png"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "compare.json").read_text())
    assert set(report["groups"]) == {"a2c", "ppo"} and len(report["runs"]) == 4
    for group in report["groups"].values():
        assert group["runs"] == 2 and len(group["curves"]["steps"]["x"]) >= 4  # every 64 steps up to 256
        point, low, high = group["aggregates"]["mean"]
        assert low <= point <= high
    assert list(report["improvement"]) == ["a2c > ppo"]
    # The report directory holds no run: comparing the same root again finds the same 4 runs.
    again = run_compare(settings(tmp_path / "runs", metric="return", reps=500, out=str(tmp_path / "runs" / "report2")))
    assert len(again["runs"]) == 4 and again["seconds"] > 0


RLIABLE_DIRECTLY = """
import json, sys
import numpy as np
from rliable import library, metrics

scores = {k: np.array(v) for k, v in json.loads(sys.stdin.read()).items()}
def theirs(x):
    return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x), metrics.aggregate_optimality_gap(x, 1.0)])
np.random.seed(3)
points, intervals = library.get_interval_estimates(scores, theirs, reps=5000)
np.random.seed(3)
p_points, p_intervals = library.get_interval_estimates({"ab": [scores["a"], scores["b"]]},
                                                       metrics.probability_of_improvement, reps=5000)
print(json.dumps({"points": {k: v.tolist() for k, v in points.items()},
                  "intervals": {k: v.tolist() for k, v in intervals.items()},
                  "improvement": [float(p_points["ab"]), *np.ravel(p_intervals["ab"]).tolist()]}))
"""


def test_aggregates_and_intervals_match_rliable_called_directly():
    """rliable's `get_interval_estimates` runs in a process of its own: its bootstrap library
    (arch, absl) changes process-wide state that breaks pytest's output capture for later tests."""
    rng = np.random.default_rng(0)
    scores = {"a": rng.uniform(0.3, 0.9, size=(10, 1)), "b": rng.uniform(0.5, 1.0, size=(7, 1))}
    done = subprocess.run([sys.executable, "-c", RLIABLE_DIRECTLY], input=json.dumps({k: v.tolist() for k, v in
                                                                                       scores.items()}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    ours = aggregate_intervals(scores, 1.0, reps=5_000, seed=3)
    for group in scores:
        for i, name in enumerate(("IQM", "mean", "optimality gap")):
            point, low, high = ours[group][name]
            assert point == pytest.approx(theirs["points"][group][i], abs=1e-12)
            assert low == pytest.approx(theirs["intervals"][group][0][i], abs=0.03)
            assert high == pytest.approx(theirs["intervals"][group][1][i], abs=0.03)
    # Probability of improvement, resampling both groups independently.
    improvement = improvement_intervals(scores, reps=5_000, seed=3)["a > b"]
    assert improvement[0] == pytest.approx(theirs["improvement"][0], abs=1e-12)
    assert improvement[1:] == pytest.approx(theirs["improvement"][1:], abs=0.03)
    # Performance profiles: the fraction of runs above tau, as rliable's score distribution.
    taus = np.linspace(0, 1, 11)
    profile = profiles(scores, taus, reps=2000, seed=0)["a"][0]
    assert profile == pytest.approx([float(np.mean(scores["a"] > t)) for t in taus])


def test_iqm_by_hand_and_one_run_gives_a_point_without_interval():
    scores = {"eight": np.arange(8, dtype=float).reshape(-1, 1), "one": np.array([[0.7]])}
    result = aggregate_intervals(scores, 1.0, reps=500, seed=0)
    assert result["eight"]["IQM"][0] == pytest.approx(np.mean([2, 3, 4, 5]))  # the middle half of 0..7
    point, low, high = result["one"]["mean"]
    assert point == pytest.approx(0.7) and math.isnan(low) and math.isnan(high)


def test_curves_on_different_step_grids_are_aligned():
    # Two runs on the line y = step / 100, evaluated at different steps and over different ranges.
    a = ([0, 20, 40, 60], [0.0, 0.2, 0.4, 0.6])
    b = ([10, 30, 60, 80], [0.1, 0.3, 0.6, 0.8])
    grid, values = align([a, b])
    assert grid.tolist() == [0, 10, 20, 30, 40, 60, 80]
    assert np.allclose(values[0, :6], grid[:6] / 100) and math.isnan(values[0, 6])  # a ends at 60
    assert math.isnan(values[1, 0]) and np.allclose(values[1, 1:], grid[1:] / 100)  # b starts at 10
    mean, low, high = mean_band(values, reps=200, rng=np.random.default_rng(0))
    complete = ~np.isnan(mean)
    assert grid[complete].tolist() == [10, 20, 30, 40, 60]  # where both runs have a value
    assert np.allclose(mean[complete], grid[complete] / 100) and np.allclose(low[complete], high[complete])
    # A run that ended at its eval.stop_at target is done: it holds its last value to the grid's end.
    _, held = align([a, b], hold=[True, False])
    assert held[0, 6] == pytest.approx(0.6) and math.isnan(held[1, 0])  # held after its end, not before its start


def test_grouping_time_to_target_and_unfinished_runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "fast-1", "ppo", [(0, 0, 0.1), (100, 10, 0.95)], 0.95)
    fake_run(root, "fast-2", "ppo", [(0, 0, 0.2), (50, 4, 0.92), (100, 9, 0.97)], 0.96)
    fake_run(root, "slow-1", "a2c", [(0, 0, 0.1), (100, 20, 0.5)], 0.5)
    fake_run(root, "slow-2", "a2c", [(0, 0, 0.1), (100, 20, 0.5)], None)  # stopped before its held-out evaluation
    typed = settings(root)
    result = compare(typed, load_records(typed.runs, typed.by))
    ppo, a2c = result["groups"]["ppo"], result["groups"]["a2c"]
    assert ppo["to_target"]["reached"] == 2 and ppo["to_target"]["steps_median"][0] == pytest.approx(75)
    assert ppo["to_target"]["wall_seconds_median"][0] == pytest.approx(7)
    assert a2c["to_target"]["reached"] == 0 and math.isinf(a2c["to_target"]["steps_median"][0])
    assert a2c["scored_runs"] == 1 and any("slow-2" in note for note in result["notes"])
    assert result["improvement"] == {}  # a2c has one scored run: no interval to compare
    assert ppo["aggregates"]["mean"][0] == pytest.approx(0.955)


def test_runs_that_reached_eval_stop_at_keep_their_last_value_in_the_group_curve(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "early", "ppo", [(0, 0, 0.1), (50, 5, 0.92)], 0.93, reached_stop_at=True)  # done at 50
    fake_run(root, "late", "ppo", [(0, 0, 0.1), (50, 5, 0.5), (100, 10, 0.9)], 0.9, reached_stop_at=True)
    typed = settings(root)
    result = compare(typed, load_records(typed.runs, typed.by))
    steps = result["groups"]["ppo"]["curves"]["steps"]
    assert steps["x"] == [0, 50, 100] and steps["mean"][-1] == pytest.approx((0.92 + 0.9) / 2)
    assert any("eval.stop_at" in note for note in result["notes"])


def test_bad_input_is_one_line_and_exit_2(tmp_path, run_mmrl, monkeypatch, capsys):
    root = tmp_path / "runs"
    fake_run(root, "goto-1", "ppo", [(0, 0, 0.1)], 0.5)
    fake_run(root, "cartpole-1", "ppo", [(0, 0, 0.1)], 0.5, data={"type": "cartpole"})
    cases = [
        ([f"runs={tmp_path / 'nothing-here'}/*"], "runs: "),
        ([f"runs={root}"], "compare takes runs of one env"),
        ([f"runs={root / 'goto-1'}", "by=algo.typo"], "by: no key 'algo.typo'"),
        ([f"runs={root / 'goto-1'}", "reps=5"], "reps: expected an integer in [100, 100000]"),
        ([f"runs={root / 'goto-1'}", "metric=speed"], "metric: expected one of"),
        ([f"runs={root / 'goto-1'}", f"out={tmp_path / 'elsewhere'}"], "out: expected a directory inside runs_root"),
    ]
    monkeypatch.setattr(sys, "argv", ["mmrl"])
    for args, message in cases:
        with pytest.raises(SystemExit) as exited:
            main(["compare", *args, f"runs_root={root}"])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert exited.value.code == 2 and len(lines) == 1 and message in lines[0], (args, err)
    # Once through the installed command line: one line on stderr, no traceback, exit status 2.
    result = run_mmrl("compare", f"runs_root={root}")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "runs: required" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "compare").exists()  # nothing half-written
