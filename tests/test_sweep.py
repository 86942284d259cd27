"""`mmrl sweep`: search-space parsing, every bad space, trials, pruning, budgets, dead workers,
resuming, several workers, per-trial sampler seeds, storages and their passwords, the exported
preset."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from mmrl_cli.config import ConfigError
from mmrl_cli.sweep.settings import HpoConfig, SweepConfig, parse_space
from mmrl_cli.sweep.study import budget_left, counted_trials, fail_stale_trials, open_study, pid_alive, stale_reason
from mmrl_cli.sweep.trial import run_trial

# A CartPole PPO trial of 2,048 env steps with two validation evaluations: ~1-2 s.
TINY_TRAIN = ["exp=cartpole-ppo", "total_steps=2048", "eval.every_steps=1024", "eval.episodes=4",
              "monitor.tensorboard=false", "checkpoint.every_updates=4"]


def train_list(overrides: list[str]) -> str:
    """`hpo.train=[...]` as on a command line (each override quoted: they contain '=')."""
    return "hpo.train=[" + ",".join(f"'{o}'" for o in overrides) + "]"


TINY_SWEEP = ["hpo=cartpole-ppo", "hpo.study_name=tiny", train_list(TINY_TRAIN),
              "hpo.retrain.top_k=1", "hpo.retrain.seeds=1", "hpo.sampler.n_startup_trials=2"]


# ------------------------------------------------------------------------ search space
def test_space_parses_every_kind_of_distribution():
    params = {p.key: p for p in parse_space({
        "algo": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                 "n_epochs": {"type": "int", "low": 1, "high": 9, "step": 2},
                 "gamma": {"type": "categorical", "choices": [0.9, 0.99]}},
        "model": {"type": "categorical", "choices": ["mlp", "cnn"]},
    })}
    assert params["algo.lr"].kind == "float" and params["algo.lr"].log
    assert params["algo.n_epochs"].step == 2
    assert params["model"].override("mlp") == "model=mlp"
    assert params["algo.gamma"].override(0.99) == "algo.gamma=0.99"
    trial = optuna.create_study().ask()
    value = params["algo.n_epochs"].suggest(trial)
    assert value in (1, 3, 5, 7, 9)


BAD_SPACES = [
    ({}, "hpo.space: expected at least one"),
    ({"algo": {"lr": {"type": "gauss", "low": 0, "high": 1}}}, "hpo.space.algo.lr.type: expected one of"),
    ({"algo": {"lr": {"type": "float", "high": 1}}}, "hpo.space.algo.lr.low: required"),
    ({"algo": {"lr": {"type": "float", "low": 1, "high": 1}}}, "hpo.space.algo.lr: expected low < high"),
    ({"algo": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "hpo.space.algo.lr.low: a log-scale"),
    ({"algo": {"lr": {"type": "float", "low": 1e-4, "high": 1, "log": True, "step": 0.1}}}, "hpo.space.algo.lr.step: Optuna cannot"),
    ({"algo": {"lr": {"type": "float", "low": 0, "high": 1, "step": 2.0}}}, "hpo.space.algo.lr.step: expected at most"),
    ({"algo": {"lr": {"type": "float", "low": 0, "high": 1, "step": -1.0}}}, "hpo.space.algo.lr.step: expected a value > 0"),
    ({"algo": {"lr": {"type": "float", "low": float("nan"), "high": 1}}}, "hpo.space.algo.lr.low: expected a finite number"),
    ({"algo": {"lr": {"type": "float", "low": "a", "high": 1}}}, "hpo.space.algo.lr.low: expected a finite number"),
    ({"algo": {"n_epochs": {"type": "int", "low": 1.5, "high": 4}}}, "hpo.space.algo.n_epochs.low: expected a finite integer"),
    ({"algo": {"lr": {"type": "float", "low": 0, "high": 1, "log": "yes"}}}, "hpo.space.algo.lr.log: expected true or false"),
    ({"algo": {"lr": {"type": "float", "low": 0, "high": 1, "choices": [1]}}}, "hpo.space.algo.lr.choices: unknown field"),
    ({"algo": {"gamma": {"type": "categorical", "choices": []}}}, "hpo.space.algo.gamma.choices: expected a non-empty list"),
    ({"algo": {"gamma": {"type": "categorical", "choices": [0.9, 0.9]}}}, "hpo.space.algo.gamma.choices: expected distinct"),
    ({"algo": {"gamma": {"type": "categorical", "choices": [[1, 2]]}}}, "hpo.space.algo.gamma.choices: expected scalar"),
    ({"algo": {"gamma": {"type": "categorical", "choices": [float("inf")]}}}, "hpo.space.algo.gamma.choices: expected finite"),
    ({"model": {"type": "float", "low": 0, "high": 1}}, "hpo.space.model: a config group is searched with a categorical"),
    ({"algo": {"type": {"type": "categorical", "choices": ["ppo", "a2c"]}}}, "hpo.space.algo.type: pick a algo option with a categorical `algo` entry"),
    ({"algo": 3}, "hpo.space.algo: expected a mapping"),
]


@pytest.mark.parametrize("space, needle", BAD_SPACES, ids=[n.split(":")[0] + ":" + n.split(":")[1][:20] for _, n in BAD_SPACES])
def test_every_bad_space_is_one_config_error(space, needle):
    with pytest.raises(ConfigError) as e:
        parse_space(space)
    assert needle in str(e.value) and "\n" not in str(e.value)


CLI_BAD = [
    (["hpo.space.algo.lr.low=-1"], "hpo.space.algo.lr.low: a log-scale distribution needs low > 0"),
    (["+hpo.space.algo.lrr={type:float,low:0.1,high:0.2}"], "hpo.space.algo.lrr: the value 0.1 gives an invalid run: algo.lrr: unknown key"),
    (["hpo.space.algo.batch_size.choices=[64,100000]"], "hpo.space.algo.batch_size: the value 100000 gives an invalid run: algo.batch_size"),
    (["hpo.sampler.type=cmaes"], "hpo.sampler.type: expected one of tpe, gp, random, nsga2"),
    (["hpo.objective.second=parameters"], "hpo.pruner.type: Optuna cannot prune multi-objective"),
    (["hpo.budget.trials=0"], "hpo.budget.trials: expected an integer in [1, 1000000]"),
    (["hpo.budget.wall_seconds=nan"], "hpo.budget.wall_seconds: expected a finite value > 0"),
    (["hpo.storage=redis"], "hpo.storage: expected null, sqlite, journal or an RDB URL"),
    (["hpo.train=['algo.lr=nan']"], "hpo.train: algo.lr: expected a finite value > 0, got nan"),
    (["hpo.study_name=../x"], "hpo.study_name: expected letters"),
    (["hpo=nope"], "hpo=nope: unknown option (expected one of: cartpole-a2c, cartpole-ppo, goto-ppo, goto-ppo-fast)"),
    (["hpo.n_workers=0"], "hpo.n_workers: expected an integer in [1, 256]"),
    (["sweep_dir=/proc/mmrl"], "sweep_dir: /proc/mmrl is not writable"),
    (["hpo.grace_seconds=5"], "hpo.grace_seconds: expected more than 2 * hpo.heartbeat_seconds"),
    (["hpo.retrain.seeds=0"], "hpo.retrain.seeds: expected an integer in [1, 1000]"),
    (["hpo.sampler.seed=-1"], "hpo.sampler.seed: expected an integer in [0, 2147483647]"),
    (["hpo.objective.seeds=0"], "hpo.objective.seeds: expected an integer in [1, 100]"),
    (["hpo.objective.aggregate=best"], "hpo.objective.aggregate: expected one of worst, mean, median"),
]


@pytest.mark.parametrize("args, needle", CLI_BAD, ids=[a[0][:40] for a, _ in CLI_BAD])
def test_bad_sweep_input_is_one_line_exit_2_and_creates_nothing(args, needle, tmp_path, monkeypatch, capsys):
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)  # in-process, as tests/test_hostile_input.py: the console script's path up to Hydra
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert len(lines) == 1 and needle in lines[0], lines
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------- study mechanics
def hpo_config(tmp_path, **changes) -> SweepConfig:
    hpo = HpoConfig(study_name="unit", train=list(TINY_TRAIN),
                    space={"algo": {"lr": {"type": "categorical", "choices": [1e-3, 1e-9]}}}, **changes)
    hpo.objective.metric = "validation_return"
    return SweepConfig(hpo=hpo, runs_root=str(tmp_path / "runs"), sweep_dir=str(tmp_path / "sweep"))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (Path(__file__).parents[1] / "mmrl_cli" / "conf" / "hpo").glob("*.yaml")))
def test_every_hpo_preset_gives_valid_trials_at_every_bound_and_choice(preset):
    """What `mmrl sweep hpo=<preset>` checks before it starts: the study settings, then the trial
    config at each bound and each choice of each searched key."""
    from hydra import compose, initialize_config_dir

    from mmrl_cli.commands.sweep import check_trial_configs
    from mmrl_cli.compose import CONF_DIR
    from mmrl_cli.sweep.settings import validate_sweep

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = validate_sweep(compose("sweep", overrides=[f"hpo={preset}"]))
        assert config.hpo.study_name == preset and parse_space(config.hpo.space)
        check_trial_configs(config)


def test_budget_counts_retried_failures_once():
    study = optuna.create_study()
    for state, attrs in [(TrialState.COMPLETE, {}), (TrialState.FAIL, {"retried_as": "x"}), (TrialState.FAIL, {}),
                         (TrialState.FAIL, {"surplus": True}), (TrialState.PRUNED, {}), (TrialState.WAITING, {})]:
        study.add_trial(optuna.trial.create_trial(state=state, user_attrs=attrs, values=[1.0] if state == TrialState.COMPLETE else None,
                                                  intermediate_values={1: 0.0} if state == TrialState.PRUNED else None))
    assert counted_trials(study.get_trials()) == 3
    hpo = HpoConfig(study_name="b", space={"algo": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}})
    hpo.budget.trials = 3
    assert "trial budget" in budget_left(study, hpo, None)
    hpo.budget.trials = 4
    assert budget_left(study, hpo, None) is None
    assert "wall-time" in budget_left(study, hpo, time.time() - 1)


def test_a_trial_of_a_dead_worker_is_failed_and_retried_once(tmp_path):
    config = hpo_config(tmp_path, max_retries=1)
    (tmp_path / "sweep").mkdir()
    study = open_study(config.hpo, tmp_path / "sweep")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"algo.lr": optuna.distributions.CategoricalDistribution([1e-3, 1e-9])})
    trial.set_user_attr("worker_host", __import__("socket").gethostname())
    trial.set_user_attr("worker_pid", dead.pid)
    trial.set_user_attr("heartbeat", time.time())
    notes = fail_stale_trials(study, config.hpo)
    assert len(notes) == 1 and "is gone" in notes[0]
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and "retried_as" in trials[0].user_attrs
    assert trials[1].state == TrialState.WAITING and trials[1].user_attrs["retry_of"] == 0
    assert trials[1].system_attrs["fixed_params"] == trials[0].params  # run again as they were
    assert fail_stale_trials(study, config.hpo) == []  # nothing left to retire
    # a heartbeat older than the grace period is stale wherever the worker ran
    frozen = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={"worker_host": "elsewhere", "worker_pid": 1,
                                                                             "heartbeat": time.time() - 500})
    assert "no heartbeat" in stale_reason(frozen, 120, time.time())
    assert stale_reason(frozen, 1000, time.time()) is None


def test_pruned_trials_stop_early_and_are_recorded_as_pruned(tmp_path):
    config = hpo_config(tmp_path)
    config.hpo.pruner.n_startup_trials = 1
    config.hpo.pruner.warmup_steps = 0
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = open_study(config.hpo, sweep)
    config.hpo.space = {"data": {"max_steps": {"type": "categorical", "choices": [500, 5]}}}
    study.enqueue_trial({"data.max_steps": 500})
    study.enqueue_trial({"data.max_steps": 5})  # returns of at most 5: below the median at the first evaluation
    params = parse_space(config.hpo.space)
    assert run_trial(study, config, params, sweep) == TrialState.COMPLETE
    assert run_trial(study, config, params, sweep) == TrialState.PRUNED
    pruned = study.get_trials()[1]
    assert pruned.user_attrs["pruned_at_step"] == 1024 and pruned.user_attrs["steps"] == 1024
    record = json.loads((sweep / "trials" / "0001" / "trial.json").read_text())
    assert record["state"] == "PRUNED"
    summary = json.loads((sweep / "trials" / "0001" / "summary.json").read_text())
    assert "pruned by Optuna at step 1,024" in summary["stopped_by"]
    assert (sweep / "trials" / "0001" / "checkpoints").is_dir()  # a pruned run can still be resumed or evaluated


def test_every_sampler_and_pruner_option_builds():
    from mmrl_cli.sweep.study import pruner_for, sampler_for

    hpo = HpoConfig(study_name="x", space={"algo": {"lr": {"type": "float", "low": 0.1, "high": 0.2}}})
    kinds = {}
    for name in ("tpe", "gp", "random", "nsga2"):
        hpo.sampler.type = name
        kinds[name] = type(sampler_for(hpo)).__name__
    assert kinds == {"tpe": "TPESampler", "gp": "GPSampler", "random": "RandomSampler", "nsga2": "NSGAIISampler"}
    for name, expected in (("none", "NopPruner"), ("median", "MedianPruner"), ("sha", "SuccessiveHalvingPruner"),
                           ("hyperband", "HyperbandPruner")):
        hpo.pruner.type = name
        assert type(pruner_for(hpo)).__name__ == expected


def test_the_report_names_each_objective_with_its_direction():
    from mmrl_cli.sweep.report import objectives_line

    one = {"objective": "validation_return", "second_objective": None, "directions": ["maximize"]}
    two = {"objective": "validation_success", "second_objective": "wall_seconds", "directions": ["maximize", "minimize"]}
    assert objectives_line(one) == "validation_return (maximize) on validation levels"
    assert objectives_line(two) == "validation_success (maximize) on validation levels, wall_seconds (minimize)"


def test_the_report_says_how_a_trials_seeds_were_combined():
    from mmrl_cli.sweep.report import objectives_line

    two = {"objective": "validation_success", "second_objective": "wall_seconds", "directions": ["maximize", "minimize"],
           "seeds_per_trial": 3, "aggregate": "worst"}
    assert objectives_line(two) == ("validation_success (maximize) on validation levels, wall_seconds (minimize); "
                                    "each trial's worst of its 3 seeds")


def test_the_report_shows_each_seeds_values_beside_the_combined_ones():
    from mmrl_cli.sweep.report import report_markdown

    results = {"study_name": "s", "objective": "validation_success", "second_objective": "wall_seconds",
               "directions": ["maximize", "minimize"], "seeds_per_trial": 2, "aggregate": "worst", "counts": {},
               "steps_spent": 0, "retrained": [], "plots": [],
               "trials": [{"number": 0, "state": "COMPLETE", "values": [0.9, 70.0], "steps": 10, "params": {"x": 1},
                           "seed_values": [[0.95, 60.0], [0.9, 70.0]]}]}
    assert "| 0 | complete | 0.9, 70 (0.95, 60; 0.9, 70) | 10 | x=1 |" in report_markdown(results)


def test_seeds_of_a_trial_combine_worst_mean_or_median():
    from mmrl_cli.sweep.trial import aggregate

    assert aggregate([0.9, 0.2, 0.8], "worst", higher_is_better=True) == 0.2
    assert aggregate([50.0, 70.0, 60.0], "worst", higher_is_better=False) == 70.0  # the slowest seed's wall time
    assert aggregate([0.9, 0.2, 0.7], "mean", higher_is_better=True) == pytest.approx(0.6)
    assert aggregate([0.9, 0.2, 0.7], "median", higher_is_better=True) == 0.7
    assert aggregate([0.9, 0.2, 0.7, 0.5], "median", higher_is_better=True) == pytest.approx(0.6)
    assert aggregate([0.4], "worst", higher_is_better=True) == 0.4


def test_trials_never_share_a_seed_and_one_seed_per_trial_keeps_the_old_numbering():
    from mmrl_cli.sweep.trial import trial_seeds

    hpo = HpoConfig(study_name="unit")
    assert [trial_seeds(hpo, n) for n in range(3)] == [[1], [2], [3]]  # first_seed + trial number, as before
    hpo.objective.seeds = 3
    drawn = [seed for n in range(5) for seed in trial_seeds(hpo, n)]
    assert drawn == list(range(1, 16))


def one_two_objective_trial(config: SweepConfig, second: str) -> tuple[optuna.Study, Path]:
    """Run one complete trial of `config` with `second` as its second objective (no pruner); the
    study and the sweep directory."""
    config.hpo.objective.second = second
    config.hpo.pruner.type = "none"
    config.hpo.check()
    sweep = Path(config.sweep_dir)
    sweep.mkdir()
    study = open_study(config.hpo, sweep)
    assert run_trial(study, config, parse_space(config.hpo.space), sweep) == TrialState.COMPLETE
    return study, sweep


def test_a_trial_with_several_seeds_trains_each_and_reports_their_worst(tmp_path):
    config = hpo_config(tmp_path)
    config.hpo.objective.seeds = 2
    study, sweep = one_two_objective_trial(config, "wall_seconds")
    trial = study.get_trials()[0]
    assert trial.user_attrs["seeds"] == [1, 2]
    per_seed = trial.user_attrs["seed_values"]
    assert len(per_seed) == 2 and trial.values == [min(v[0] for v in per_seed), max(v[1] for v in per_seed)]
    for seed in (1, 2):  # each seed is its own run directory, with its own seed
        run = sweep / "trials" / "0000" / f"seed{seed}"
        assert json.loads((run / "summary.json").read_text())["steps"] == 2048
        assert f"seed: {seed}" in (run / "config.yaml").read_text()
    record = json.loads((sweep / "trials" / "0000" / "trial.json").read_text())
    assert [r["seed"] for r in record["per_seed"]] == [1, 2] and record["values"] == trial.values
    assert trial.user_attrs["steps"] == 2 * 2048  # both seeds' env steps count against the budget


def test_a_second_objective_makes_a_two_objective_trial(tmp_path):
    study, _ = one_two_objective_trial(hpo_config(tmp_path), "parameters")
    values = study.get_trials()[0].values
    assert len(values) == 2 and values[1] == 2 * (4 * 64 + 64 + 64 * 64 + 64) + (64 * 2 + 2) + (64 + 1)  # SB3's 64-64 MLPs


# ------------------------------------------------------------------------------ seeds
CONTINUOUS_SPACE = {"algo": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                             "ent_coef": {"type": "float", "low": 1e-8, "high": 1e-2, "log": True}}}


def draw(studies: list[optuna.Study], n: int) -> None:
    """Ask and tell `n` trials, the studies taking turns as worker processes do (each with its own sampler)."""
    params = parse_space(CONTINUOUS_SPACE)
    for k in range(n):
        study = studies[k % len(studies)]
        trial = study.ask()
        for param in params:
            param.suggest(trial)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("sampler", ["tpe", "gp", "random", "nsga2"])
def test_workers_and_reruns_never_draw_the_same_start_up_trial(tmp_path, sampler):
    config = hpo_config(tmp_path)
    config.hpo.space = CONTINUOUS_SPACE
    config.hpo.sampler.type = sampler
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    draw([open_study(config.hpo, sweep) for _ in range(2)], 6)  # hpo.n_workers=2
    draw([open_study(config.hpo, sweep)], 4)  # the same command again, with a larger trial budget
    trials = open_study(config.hpo, sweep).get_trials()
    assert len(trials) == 10 <= config.hpo.sampler.n_startup_trials  # all of them random start-up draws
    drawn = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(drawn)) == len(drawn), drawn
    # still reproducible: one worker in one go draws the same configurations, trial by trial
    alone = tmp_path / "alone"
    alone.mkdir()
    study = open_study(config.hpo, alone)
    draw([study], 10)
    assert [t.params for t in study.get_trials()] == [t.params for t in trials]


# --------------------------------------------------------------------------- storages
SECRET = "s3cr3t-pw"


def test_passwords_are_masked_in_any_text(monkeypatch):
    from mmrl_cli.sweep.study import PASSWORD_VARIABLE, mask_secrets

    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    assert mask_secrets("postgresql://user:s3cr3t@host/db") == "postgresql://user:***@host/db"
    assert mask_secrets("mysql+pymysql://u:p@ss@h:3306/d failed") == "mysql+pymysql://u:***@h:3306/d failed"
    assert mask_secrets("['hpo.storage=postgresql://u:pw@h/db', 'x=1']") == "['hpo.storage=postgresql://u:***@h/db', 'x=1']"
    assert mask_secrets("invalid dsn: password=hunter22", "postgresql://u:hunter22@h/db") == "invalid dsn: password=***"
    monkeypatch.setenv(PASSWORD_VARIABLE, "from-env-pw")
    assert mask_secrets("FATAL: bad password from-env-pw") == "FATAL: bad password ***"
    assert mask_secrets("sqlite:///x.db and postgresql://user@host/db") == "sqlite:///x.db and postgresql://user@host/db"


def test_the_password_never_reaches_sweep_yaml_and_workers_get_it_from_their_environment(tmp_path, monkeypatch):
    from mmrl_cli.sweep.run import load_sweep_config, prepare_sweep_dir
    from mmrl_cli.sweep.study import PASSWORD_VARIABLE, parse_storage_url, storage_environment

    monkeypatch.delenv(PASSWORD_VARIABLE, raising=False)
    config = hpo_config(tmp_path, storage=f"postgresql://user:{SECRET}@db.example/optuna")
    sweep = prepare_sweep_dir(config)
    saved = (sweep / "sweep.yaml").read_text()
    assert SECRET not in saved and "storage: postgresql://user:***@db.example/optuna" in saved
    environment = storage_environment(config.hpo.storage)
    assert environment == {PASSWORD_VARIABLE: SECRET}
    # a worker: the saved config plus the environment the sweep gave it
    stored = load_sweep_config(sweep).hpo.storage
    with pytest.raises(ConfigError, match=f"not saved anywhere; set {PASSWORD_VARIABLE}"):
        parse_storage_url(stored)
    monkeypatch.setenv(PASSWORD_VARIABLE, SECRET)
    assert parse_storage_url(stored).password == SECRET
    # a URL without a password takes it from the environment; an inline one wins
    assert parse_storage_url("postgresql://user@db.example/optuna").password == SECRET
    assert parse_storage_url("postgresql://user:inline@db.example/optuna").password == "inline"


def test_a_server_that_does_not_answer_is_one_line_naming_the_storage(tmp_path, monkeypatch):
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    from mmrl_cli.sweep.study import check_storage

    # the driver "installed", the server's port closed
    monkeypatch.setattr(PGDialect_psycopg2, "import_dbapi", classmethod(lambda cls: types.SimpleNamespace()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = hpo_config(tmp_path, storage=f"postgresql+psycopg2://user:{SECRET}@127.0.0.1:{port}/optuna")
    started = time.time()
    with pytest.raises(ConfigError) as e:
        check_storage(config.hpo, tmp_path / "sweep")
    message = str(e.value)
    assert message.startswith(f"hpo.storage: cannot reach 127.0.0.1:{port} of postgresql+psycopg2://user:***@")
    assert SECRET not in message and "\n" not in message and time.time() - started < 10
    assert not (tmp_path / "sweep").exists()


def test_a_failed_connection_is_one_line():
    from sqlalchemy.engine import make_url

    from mmrl_cli.sweep.study import connect

    with pytest.raises(ConfigError, match="hpo.storage: cannot connect to sqlite:////: unable to open database file"):
        connect(make_url("sqlite:////"), "sqlite:////")


def test_a_password_on_the_command_line_appears_nowhere(tmp_path, monkeypatch, capsys):
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", f"hpo.storage=postgresql://user:{SECRET}@db.example/optuna"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and SECRET not in captured.out + captured.err
    assert captured.err.strip() == ("mmrl sweep: error: hpo.storage: postgresql://user:***@db.example/optuna needs "
                                    + captured.err.split(" needs ", 1)[1].strip())
    assert not list(tmp_path.iterdir())


def test_an_unexpected_error_during_a_sweep_is_masked_and_skips_hydra(tmp_path, monkeypatch, capsys):
    from mmrl_cli.sweep import run

    def broken(config):
        raise RuntimeError(f"lost the server: postgresql://user:{SECRET}@db.example/optuna")

    monkeypatch.setattr(run, "run_study", broken)
    config = hpo_config(tmp_path, storage=f"postgresql://user:{SECRET}@db.example/optuna")
    with pytest.raises(SystemExit) as exit_info:  # not an exception: Hydra would print the overrides
        run.run_sweep(config)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and SECRET not in err
    assert err.strip().splitlines()[-1] == "mmrl sweep: error: lost the server: postgresql://user:***@db.example/optuna"


def test_more_workers_than_memory_allows_is_refused(tmp_path, monkeypatch):
    from mmrl_cli.sweep.run import check_workers_fit

    monkeypatch.setattr("mmrl_cli.preflight.available_memory", lambda: 2**30)
    check_workers_fit(hpo_config(tmp_path, n_workers=6))
    with pytest.raises(ConfigError, match=r"hpo.n_workers: 8 worker processes need at least 1.2 GiB .* expected at most 6"):
        check_workers_fit(hpo_config(tmp_path, n_workers=8))


# ------------------------------------------------------------------------- end to end
def study_of(sweep_dir: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


@pytest.mark.slow  # ~40 s of subprocess trials; the in-process sweep tests cover trials, pruning, retries and resume
def test_a_tiny_sweep_end_to_end_resumes_and_exports_a_preset_train_runs(run_mmrl, capsys):
    result = run_mmrl("sweep", *TINY_SWEEP, "hpo.budget.trials=3", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = run_mmrl.cwd / "runs" / "sweeps" / "tiny"
    results = json.loads((sweep / "results.json").read_text())
    assert results["counts"].get("complete", 0) + results["counts"].get("pruned", 0) == 3
    assert len(results["retrained"]) == 1 and results["retrained"][0]["seeds"] == 1
    retrained = results["retrained"][0]
    assert Path(retrained["run_dirs"][0]).name == "seed10000"
    assert (sweep / "report.md").read_text().startswith("# mmrl sweep: tiny")
    assert (sweep / "plots" / "optimization_history.png").stat().st_size > 1000
    assert any((sweep / "tb").iterdir())
    assert (sweep / "trials" / "0000" / "trial.json").exists()
    # the same command again: nothing re-run, the report rewritten
    mtime = (sweep / "trials" / "0000" / "summary.json").stat().st_mtime
    again = run_mmrl("sweep", *TINY_SWEEP, "hpo.budget.trials=3", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "no new trials: the trial budget (3) is used up" in again.stderr
    assert (sweep / "trials" / "0000" / "summary.json").stat().st_mtime == mtime
    assert len(study_of(sweep).get_trials()) == 3
    # a different search space is refused (in-process: the check runs before Hydra)
    from mmrl_cli.cli import main

    cwd = os.getcwd()
    os.chdir(run_mmrl.cwd)
    try:
        with pytest.raises(SystemExit) as refused:
            main(["sweep", *TINY_SWEEP, "hpo.space.algo.lr.high=0.01"])
    finally:
        os.chdir(cwd)
    assert refused.value.code == 2 and "hpo.space: the study in" in capsys.readouterr().err
    # the exported preset runs as is in `mmrl train`
    preset = sweep / "exp" / "tiny-best.yaml"
    assert "override /algo: ppo" in preset.read_text()
    trained = run_mmrl("train", "exp=tiny-best", "total_steps=512", "monitor.tensorboard=false", timeout=120)
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_dirs = [p for p in (run_mmrl.cwd / "runs").glob("20*/*") if p.is_dir()]
    config = (run_dirs[0] / "config.yaml").read_text()
    for key, value in retrained["params"].items():
        assert f"{key.split('.')[-1]}: {value}" in config


@pytest.mark.slow  # ~40 s; dead-worker detection and retry are covered in process by the default suite
def test_kill_9_mid_trial_then_rerun_keeps_finished_trials_and_retries_the_killed_one(run_mmrl):
    args = [*TINY_SWEEP, "hpo.budget.trials=2", "hpo.retrain.top_k=0", "hpo.pruner.type=none",
            train_list([o.replace("total_steps=2048", "total_steps=6144") for o in TINY_TRAIN])]
    sweep = run_mmrl.cwd / "runs" / "sweeps" / "tiny"
    process = subprocess.Popen([sys.executable, "-m", "mmrl_cli.cli", "sweep", *args], cwd=run_mmrl.cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not ((sweep / "trials" / "0000" / "trial.json").exists() and (sweep / "trials" / "0001" / "metrics.jsonl").exists()):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)  # the sweep, mid-trial 1; its worker exits at its next update
    process.wait()
    killed = study_of(sweep).get_trials()[1]
    assert killed.state == TrialState.RUNNING
    while pid_alive(killed.user_attrs["worker_pid"]):
        assert time.time() < deadline
        time.sleep(0.1)
    finished = (sweep / "trials" / "0000" / "summary.json").stat().st_mtime
    result = run_mmrl("sweep", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trial 1 failed (its worker (pid" in result.stderr
    trials = study_of(sweep).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    assert (sweep / "trials" / "0000" / "summary.json").stat().st_mtime == finished  # not re-run


@pytest.mark.slow  # a second process or a kill/restart cycle: run with -m slow
def test_two_workers_share_one_journal_study_without_running_a_trial_twice(run_mmrl):
    result = run_mmrl("sweep", *TINY_SWEEP, "hpo.budget.trials=4", "hpo.n_workers=2", "hpo.storage=journal",
                      "hpo.retrain.top_k=0", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = run_mmrl.cwd / "runs" / "sweeps" / "tiny"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / "journal.log")))
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2  # both workers ran trials
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # each drew its own configuration
    assert sorted(p.name for p in (sweep / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]
    assert "hardware.threads=" in " ".join(trials[0].user_attrs["overrides"])
    logs = sorted(p.name for p in (sweep / "workers").iterdir())  # <host>-<pid of this mmrl sweep>-<i>.log
    assert len(logs) == 2 and logs[0].endswith("-0.log") and logs[1].endswith("-1.log")
    assert logs[0].rsplit("-", 1)[0] == logs[1].rsplit("-", 1)[0]


def test_each_mmrl_sweep_process_names_its_worker_logs_apart(tmp_path, monkeypatch):
    from mmrl_cli.sweep import run

    first = run.worker_log(tmp_path, 0)
    monkeypatch.setattr(run.os, "getpid", lambda: 424242)  # a second `mmrl sweep` on the same study
    second = run.worker_log(tmp_path, 0)
    assert first != second and second.name == f"{run.HOST}-424242-0.log" and second.parent == tmp_path / "workers"
