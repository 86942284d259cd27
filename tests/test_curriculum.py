"""Level samplers (uniform, PLR) and curricula: the numbers against hand-computed values, the env
playing the sampler's choice at once, splits kept apart, bit-identical resume, short runs."""

import json
import math
from pathlib import Path

import pytest
import torch

from mmrl_cli import rollout as rollout_module
from mmrl_cli import trainer
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import ConfigError
from mmrl_cli.envs import SPLIT_SEED_OFFSETS, GotoEnv, make_env
from mmrl_cli.envs.goto import SPLIT_PERCENTILES, OBJECT_BASE, layout_percentile
from mmrl_cli.levels import Curriculum, EpisodeScorer, LevelControl, PLRSampler, UniformSampler, stages_of
from mmrl_cli.levels.samplers import rank_weights

QUIET = ["monitor.progress=false", "monitor.tensorboard=false"]
SMALL = ["total_steps=512", "rollout.n_envs=8", "rollout.n_steps=8", "algo.batch_size=32", "algo.n_epochs=2",
         "eval.every_steps=256", "eval.episodes=8", "checkpoint.every_updates=2", *QUIET]


# ----------------------------------------------------------------------------- curriculum
def test_success_stages_advance_only_after_a_full_window_above_the_threshold():
    curriculum = Curriculum([{"n": 0}, {"n": 1}, {"n": 2}], "success", threshold=0.75, window=4, stage_steps=1)
    curriculum.record(torch.tensor([True, True, True]))
    assert not curriculum.advance(0) and curriculum.stage == 0  # 3 episodes: window not full
    curriculum.record(torch.tensor([False]))
    assert curriculum.advance(0) and curriculum.stage == 1  # 3/4 = 0.75 >= 0.75
    curriculum.record(torch.tensor([True, False, True, False, True]))  # window: F T F T = 0.5
    assert not curriculum.advance(0) and curriculum.stage == 1
    curriculum.record(torch.tensor([True, True]))  # window: F T T T
    assert curriculum.advance(0) and curriculum.stage == 2 and curriculum.last
    curriculum.record(torch.ones(4, dtype=torch.bool))
    assert not curriculum.advance(0) and curriculum.stage == 2 and curriculum.mastered


def test_schedule_stages_advance_one_at_a_time_with_training_progress():
    curriculum = Curriculum([{}, {}, {}], "schedule", threshold=0.5, window=10, stage_steps=100)
    stages = []
    for steps in (50, 99, 100, 350, 351, 1000):
        curriculum.advance(steps)
        stages.append(curriculum.stage)
    assert stages == [0, 0, 1, 2, 2, 2] and not curriculum.mastered


def test_curriculum_state_round_trips():
    curriculum = Curriculum([{}, {}], "success", threshold=0.5, window=3, stage_steps=1)
    curriculum.record(torch.tensor([True, False]))
    copy = Curriculum([{}, {}], "success", threshold=0.5, window=3, stage_steps=1)
    copy.load_state_dict(curriculum.state_dict())
    for c in (curriculum, copy):
        c.record(torch.tensor([True]))
    assert curriculum.advance(0) == copy.advance(0) == True and copy.stage == 1  # noqa: E712


def test_stages_end_with_the_configured_task():
    cfg = compose_train_config(["data.curriculum=success", "data.curriculum_stages=[{num_distractors:0},{num_walls:2}]",
                                "data.num_distractors=2", "data.grid_size=6"])
    assert stages_of(cfg.data) == [{"num_distractors": 0, "num_walls": 0, "max_steps": 32},
                                   {"num_distractors": 2, "num_walls": 2, "max_steps": 32},
                                   {"num_distractors": 2, "num_walls": 0, "max_steps": 32}]


class FakeEnv:
    def __init__(self):
        self.stages = []

    def set_stage(self, stage):
        self.stages.append(stage)


class Progress:
    steps = 0


def test_the_control_moves_the_env_reports_the_stage_and_stops_when_mastered():
    env = FakeEnv()
    curriculum = Curriculum([{"k": 0}, {"k": 1}], "success", threshold=0.5, window=2, stage_steps=1)
    control = LevelControl(env, curriculum=curriculum, stop_when_mastered=True)
    control.episodes_ended({"success": torch.tensor([True, True])})
    metrics = {}
    control.on_update(Progress(), metrics)
    assert env.stages == [{"k": 1}] and metrics["curriculum_stage"] == 1.0
    control.episodes_ended({"success": torch.tensor([True, False])})
    with pytest.raises(trainer.StopTraining, match="last stage is mastered"):
        control.on_update(Progress(), {})


# ------------------------------------------------------------------------------------ PLR
def test_rank_transform_and_temperature_match_hand_computed_weights():
    scores = torch.tensor([0.2, 0.9, 0.5, 0.1], dtype=torch.float64)  # ranks 3, 1, 2, 4
    assert torch.allclose(rank_weights(scores, 1.0), torch.tensor([1 / 3, 1.0, 1 / 2, 1 / 4], dtype=torch.float64))
    assert torch.allclose(rank_weights(scores, 0.5), torch.tensor([1 / 9, 1.0, 1 / 4, 1 / 16], dtype=torch.float64))


def test_replay_distribution_mixes_rank_scores_with_staleness_over_seen_levels():
    plr = PLRSampler(4, seed=0, temperature=1.0, staleness_coef=0.25)
    plr.update_scores(torch.tensor([0, 1, 2]), torch.tensor([0.2, 0.9, 0.5]))  # level 3 unseen
    plr.staleness = torch.tensor([1.0, 0.0, 3.0, 7.0], dtype=torch.float64)
    # Scores: ranks over all levels (unseen level 3 has score 0: rank 4) -> 1/3, 1, 1/2; level 3 zeroed.
    score_part = torch.tensor([1 / 3, 1.0, 1 / 2, 0.0], dtype=torch.float64) / (1 / 3 + 1 + 1 / 2)
    stale_part = torch.tensor([1.0, 0.0, 3.0, 0.0], dtype=torch.float64) / 4.0
    expected = 0.75 * score_part + 0.25 * stale_part
    assert torch.allclose(plr.replay_distribution(), expected)
    assert plr.replay_probability() == 0.75  # proportionate: 3 of 4 levels seen
    fixed = PLRSampler(4, seed=0, replay_schedule="fixed", replay_prob=0.3)
    assert fixed.replay_probability() == 0.0  # nothing seen yet: explore
    fixed.update_scores(torch.tensor([0]), torch.tensor([1.0]))
    assert fixed.replay_probability() == 0.3
    fixed.update_scores(torch.tensor([1, 2, 3]), torch.tensor([1.0, 1.0, 1.0]))
    assert fixed.replay_probability() == 1.0  # all seen: always replay


def test_sampling_follows_the_distribution_and_updates_staleness():
    plr = PLRSampler(3, seed=0, temperature=1.0, staleness_coef=0.0)
    plr.update_scores(torch.tensor([0, 1, 2]), torch.tensor([3.0, 2.0, 1.0]))  # all seen: always replay
    draws = plr.sample(6000)
    frequencies = torch.bincount(draws, minlength=3).double() / len(draws)
    expected = torch.tensor([1.0, 1 / 2, 1 / 3], dtype=torch.float64) / (11 / 6)
    assert torch.allclose(frequencies, expected, atol=0.02)
    last = int(draws[-1])
    assert plr.staleness[last] == 0 and plr.staleness.sum() > 0


def test_unseen_levels_are_tried_before_replay_starts():
    plr = PLRSampler(5, seed=3)
    first = plr.sample(1)
    assert plr.replay_probability() == 0.0 and 0 <= int(first) < 5


def test_alpha_blends_scores():
    plr = PLRSampler(2, seed=0, alpha=0.5)
    plr.update_scores(torch.tensor([0, 0]), torch.tensor([1.0, 3.0]))  # first: 0.5*0 + 0.5*1 ... then 0.5*0.5 + 1.5
    assert plr.scores[0].item() == pytest.approx(1.75) and bool(plr.seen[0]) and not bool(plr.seen[1])


def test_episode_scores_are_per_episode_means_with_unfinished_episodes_carried_over():
    scorer = EpisodeScorer(2, "value_l1")
    advantages = torch.tensor([[1.0, -2.0], [-3.0, 4.0], [5.0, 6.0]])
    dones = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    levels = torch.tensor([[7, 8], [7, 9], [5, 9]])
    ids, scores = scorer.finished(advantages, dones, levels)
    # env 1 ends level 8 at step 0 (|-2|), env 0 ends level 7 at step 1 (mean |1|, |-3| = 2)
    assert ids.tolist() == [8, 7] and torch.allclose(scores, torch.tensor([2.0, 2.0], dtype=torch.float64))
    assert scorer.partial_sum.tolist() == [5.0, 10.0] and scorer.partial_count.tolist() == [1.0, 2.0]
    ids, scores = scorer.finished(torch.tensor([[1.0, -1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[5, 9]]))
    assert ids.tolist() == [5, 9] and torch.allclose(scores, torch.tensor([3.0, 11 / 3], dtype=torch.float64))
    assert scorer.partial_count.tolist() == [0.0, 0.0]
    positive = EpisodeScorer(1, "positive_value_loss")
    _, scores = positive.finished(torch.tensor([[1.0], [-3.0]]), torch.tensor([[0.0], [1.0]]), torch.tensor([[4], [4]]))
    assert scores.tolist() == [0.5]


def test_sampler_state_round_trips_exactly():
    plr = PLRSampler(10, seed=5)
    plr.update_scores(torch.arange(6), torch.rand(6))
    plr.sample(4)
    copy = PLRSampler(10, seed=99)
    copy.load_state_dict(plr.state_dict())
    assert torch.equal(plr.sample(20), copy.sample(20))
    uniform, other = UniformSampler(10, 1), UniformSampler(10, 2)
    other.load_state_dict(uniform.state_dict())
    assert torch.equal(uniform.sample(5), other.sample(5))


# ------------------------------------------------------------------------- env and collector
class Scripted:
    """A sampler that hands out 100, 101, 102, ... and remembers what it gave."""

    def __init__(self):
        self.given = []

    def sample(self, count):
        ids = torch.arange(len(self.given), len(self.given) + count) + 100
        self.given += ids.tolist()
        return ids


def test_the_env_plays_the_samplers_choice_at_the_very_next_reset():
    env = GotoEnv(4, max_steps=3, seed=0)
    env.level_sampler = Scripted()
    env.reset(seed=0)
    assert env.level_id.tolist() == [100, 101, 102, 103]
    for _ in range(3):  # every episode times out at step 3 (or ends earlier on an object)
        _, _, _, _, info = env.step(torch.zeros(4, dtype=torch.int64))
        if len(info["done_index"]):
            assert env.level_id[info["done_index"]].tolist() == env.level_sampler.given[-len(info["done_index"]):]
    reference = GotoEnv(1, seed=0)
    reference.reset(level_ids=torch.tensor([env.level_sampler.given[-1]]))
    assert torch.equal(reference.cells[0], env.cells[int(info["done_index"][-1])])


def test_the_collector_keeps_each_transitions_level_id():
    cfg = compose_train_config(["model=mlp", "rollout.n_envs=4", "rollout.n_steps=6", "algo.batch_size=24", "data.max_steps=2"])
    env = make_env(cfg.data, 4, torch.device("cpu"), seed=0)
    env.level_sampler = Scripted()
    from mmrl_cli.builders import autocast_for, build_policy_from

    policy, _ = build_policy_from(cfg, env, torch.device("cpu"))
    collector = rollout_module.Collector(env, policy, 6, torch.device("cpu"), 0, autocast_for(torch.device("cpu"), "fp32"))
    buffer = collector.collect()
    ids = buffer.step_fields["level_id"]
    assert ids[0].tolist() == [100, 101, 102, 103]
    for t in range(1, 6):  # a new level id exactly after every episode end
        changed = ids[t] != ids[t - 1]
        assert torch.equal(changed, buffer.dones[t - 1] > 0)


def test_curriculum_stages_and_sampled_levels_stay_in_the_training_split():
    env = GotoEnv(64, grid_size=5, num_distractors=2, seed=0)
    env.set_stage({"num_distractors": 0})
    env.level_sampler = UniformSampler(200, 0)
    env.reset(seed=0)
    assert env.num_distractors == 0
    objects = (env.cells >= OBJECT_BASE).flatten(1).sum(1)
    assert bool((objects == 1).all())
    agent_cell = env.agent[:, 0] * 5 + env.agent[:, 1]
    percentile = layout_percentile(env.cells.flatten(1), agent_cell, env.target)
    low, high = SPLIT_PERCENTILES["train"]
    assert bool(((percentile >= low) & (percentile < high)).all())
    assert bool((env.level_id < 200).all())


def test_gymnasium_training_seeds_never_overlap_validation_or_heldout_seeds():
    cfg = compose_train_config(["data=gym", "data.env_id=CartPole-v1", "data.num_train_levels=50"])
    env = make_env(cfg.data, 4, torch.device("cpu"), seed=3)
    env.reset(seed=3)
    for _ in range(60):
        env.step(torch.zeros(4, dtype=torch.int64))
    assert bool((env.level_id >= 0).all()) and bool((env.level_id < 50).all())
    # training seeds are 0..49; validation and held-out envs reset from their offsets on
    assert 50 <= SPLIT_SEED_OFFSETS["validation"] and 50 <= SPLIT_SEED_OFFSETS["heldout"]
    for split in ("validation", "heldout"):  # their envs keep gymnasium's own seeding from their offsets
        assert make_env(cfg.data, 2, torch.device("cpu"), seed=3, split=split).picker is None


def test_plr_needs_a_finite_level_set():
    with pytest.raises(ConfigError, match="data.num_train_levels"):
        compose_train_config(["data.level_sampler=plr"])


# -------------------------------------------------------------------------- whole runs
PLR_RUN = [*SMALL, "data.num_train_levels=20", "data.level_sampler=plr", "data.curriculum=success",
           "data.curriculum_stages=[{num_distractors:0}]", "data.curriculum_window=4", "data.curriculum_threshold=0.2"]


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_plr_and_curriculum_state_survive_resume_bit_identically(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from mmrl_cli.checkpoint import find_checkpoint

    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = trainer.train(compose_train_config(PLR_RUN), reference_dir)
    assert reference["stopped_by"] is None

    class StopAt:
        def on_update(self, progress, metrics):
            if progress.update == 4:
                raise trainer.StopTraining("test stop")

    stopped = trainer.train(compose_train_config(PLR_RUN), resumed_dir, callbacks=[StopAt()])
    assert stopped["updates"] == 4
    checkpoint, _ = find_checkpoint(resumed_dir)
    finished = trainer.train(compose_train_config(PLR_RUN), resumed_dir, resume_from=checkpoint)
    assert rows(resumed_dir) == rows(reference_dir)
    a, b = load_file(str(reference_dir / "model.safetensors")), load_file(str(resumed_dir / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert finished["heldout_success_rate"] == reference["heldout_success_rate"]
    assert any("plr_seen_levels" in row and "curriculum_stage" in row for row in rows(reference_dir))


A2C_SMALL = ["algo=a2c", *(o for o in SMALL if not o.startswith("algo."))]


@pytest.mark.parametrize("overrides", [
    [*SMALL, "data.num_train_levels=20", "data.level_sampler=plr", "data.plr_score=positive_value_loss"],
    [*A2C_SMALL, "data.num_train_levels=20", "data.level_sampler=plr", "data.plr_replay_schedule=fixed"],
    [*SMALL, "data.curriculum=schedule", "data.curriculum_stages=[{num_distractors:0,max_steps:16}]",
     "data.curriculum_stage_steps=256"],
], ids=["plr-ppo", "plr-a2c", "schedule"])
def test_short_runs_of_each_option(tmp_path, overrides):
    summary = trainer.train(compose_train_config(overrides), tmp_path)
    assert summary["stopped_by"] is None and math.isfinite(summary["heldout_return"])
    last = rows(tmp_path)[-1]
    if "data.curriculum=schedule" in overrides:
        assert last["curriculum_stage"] == 1.0
    else:
        assert 0 < last["plr_seen_levels"] <= 1


def test_a_mastered_curriculum_stops_the_run(tmp_path):
    summary = trainer.train(compose_train_config([
        *SMALL, "total_steps=4096", "data.curriculum=success", "data.curriculum_stages=[{num_distractors:0}]",
        "data.curriculum_threshold=0.0", "data.curriculum_window=2", "data.curriculum_stop=true"]), tmp_path)
    assert summary["stopped_by"].startswith("LevelControl: curriculum: the last stage is mastered")
    assert summary["updates"] < 4096 // 64


def test_gymnasium_seed_set_with_plr_and_an_env_id_curriculum_run(tmp_path):
    pytest.importorskip("minigrid")
    summary = trainer.train(compose_train_config([
        "data=gym", "data.env_id=BabyAI-GoToRedBall-v0", "model=cnn-minigrid", "total_steps=256", "rollout.n_envs=4",
        "rollout.n_steps=16", "algo.batch_size=32", "algo.n_epochs=1", "eval.every_steps=256", "eval.episodes=4", *QUIET,
        "data.num_train_levels=10", "data.level_sampler=plr", "data.curriculum=schedule",
        "data.curriculum_stages=[BabyAI-GoToRedBallGrey-v0]", "data.curriculum_stage_steps=128"]), tmp_path)
    assert summary["stopped_by"] is None
    assert rows(tmp_path)[-1]["curriculum_stage"] == 1.0


def test_cli_run_with_plr_and_a_curriculum(tmp_path, monkeypatch):
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    main(["train", *PLR_RUN, "runs_root=runs", "run_name=plr"])  # returns normally on success
    (run_dir,) = list((tmp_path / "runs").glob("*/*-plr"))
    assert "curriculum_stage" in rows(run_dir)[-1]
