"""Live warnings (vanishing/exploding gradients, KL blow-ups, overfitting) and what gets logged where."""

import json

import torch
from rich.console import Console

from mmrl_cli.config import TrainConfig
from mmrl_cli.monitor import Monitor, tag_for

METRICS = {"approx_kl": 0.01, "explained_variance": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "grad_norm": 1.0,
           "loss_value": 0.5}


def make_monitor(tmp_path, tensorboard=False):
    console = Console(record=True, width=200)
    cfg = TrainConfig()
    cfg.monitor.tensorboard = tensorboard
    return Monitor(cfg, tmp_path, total_steps=100, console=console), console


def test_vanishing_and_exploding_gradients_are_reported(tmp_path):
    monitor, console = make_monitor(tmp_path)
    monitor.check_gradients({"encoder": 0.0, "heads": 1e6, "trunk": 1.0})
    text = console.export_text()
    assert "vanishing gradients in 'encoder'" in text and "exploding gradients in 'heads'" in text
    assert "trunk" not in text


def test_a_problem_that_persists_is_counted_not_repeated(tmp_path):
    monitor, console = make_monitor(tmp_path)
    for update in range(150):  # a module whose gradient vanishes at every update, its norm changing
        monitor.check_gradients({"mission": 1e-10 * (1 + update), "heads": 1.0})
    monitor.check_gradients({"trunk": 0.0})  # another module is another problem: shown at once
    lines = [line for line in console.export_text().splitlines() if "warning" in line]
    assert len(lines) == 4, lines
    assert "(10 times so far)" in lines[1] and "(100 times so far)" in lines[2] and "'trunk'" in lines[3]


def test_kl_blow_up_and_generalization_gap_are_reported(tmp_path):
    monitor, console = make_monitor(tmp_path)
    monitor.log_update(1, 10, {**METRICS, "approx_kl": 0.5}, [], skipped_total=0, sps=100.0, update_seconds=0.1)
    monitor.log_eval(10, {"success_rate": 0.5, "return_mean": 0.4}, {"success_rate": 0.95, "return_mean": 0.9})
    text = console.export_text()
    assert "KL blow-up" in text and "overfitting to training levels" in text and "validation" in text


def test_no_generalization_gap_without_a_finite_training_subset(tmp_path):
    monitor, console = make_monitor(tmp_path)
    monitor.log_eval(10, {"success_rate": 0.1, "return_mean": 0.1})
    assert "overfitting" not in console.export_text()


def test_skipped_steps_are_reported_and_metrics_logged_per_update(tmp_path):
    monitor, console = make_monitor(tmp_path)
    with monitor:
        monitor.log_update(1, 10, METRICS, [], skipped_total=0, sps=100.0, update_seconds=0.1)
        monitor.log_update(2, 20, METRICS, [], skipped_total=3, sps=100.0, update_seconds=0.1)
    assert "skipped 3 gradient step(s)" in console.export_text()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2] and rows[0]["approx_kl"] == 0.01


def test_any_metric_an_algorithm_returns_reaches_tensorboard_under_a_stable_tag(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert tag_for("loss_policy") == "losses/policy" and tag_for("approx_kl") == "losses/approx_kl"
    assert tag_for("entropy") == "policy/entropy" and tag_for("loss_distill") == "losses/distill"
    assert tag_for("world_model_error") == "update/world_model_error"
    monitor, _ = make_monitor(tmp_path, tensorboard=True)
    episodes = [(torch.tensor([1.0, 3.0]), torch.tensor([5, 7]), torch.tensor([True, False]))]
    with monitor:
        monitor.log_update(1, 10, {**METRICS, "loss_distill": 0.25, "world_model_error": 2.0}, episodes, 2, 50.0, 0.1,
                           lambda: {"heads": 0.5})
        monitor.log_eval(10, {"success_rate": 0.5, "return_mean": 0.4}, {"success_rate": 0.75, "return_mean": 0.6})
        monitor.log_heldout(10, {"success_rate": 0.25, "return_mean": 0.2})
    scalars = EventAccumulator(str(tmp_path / "tb")).Reload()
    value = lambda tag: scalars.Scalars(tag)[-1].value  # noqa: E731
    assert value("losses/distill") == 0.25 and value("update/world_model_error") == 2.0
    assert value("losses/value") == 0.5 and value("grad/global_norm") == 1.0 and value("grad/heads_norm") == 0.5
    assert value("numerics/skipped_steps") == 2 and value("charts/episodic_return") == 2.0
    assert value("charts/success_rate") == 0.5 and value("charts/episode_length") == 6.0
    assert value("eval/validation_success_rate") == 0.5 and value("eval/success_rate") == 0.75
    assert value("eval/generalization_gap") == 0.25 and value("eval/heldout_success_rate") == 0.25


def test_tensorboard_every_n_updates_but_every_update_in_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    console = Console(record=True, width=200)
    cfg = TrainConfig()
    cfg.monitor.log_every_updates = 3
    monitor = Monitor(cfg, tmp_path, total_steps=100, console=console)
    with monitor:
        for update in range(1, 8):
            monitor.log_update(update, 10 * update, METRICS, [], 0, 50.0, 0.1)
    steps = [e.step for e in EventAccumulator(str(tmp_path / "tb")).Reload().Scalars("losses/value")]
    assert steps == [30, 60]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 7


def test_resumed_monitor_drops_metrics_logged_after_the_checkpoint(tmp_path):
    lines = [json.dumps({"update": u, "step": 10 * u}) for u in (1, 2, 3)] + ['{"update": 4, "st']  # cut by a crash
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    cfg = TrainConfig()
    cfg.monitor.tensorboard = False
    Monitor(cfg, tmp_path, total_steps=100, start=(2, 20)).metrics_file.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]


def test_a_generalization_gap_that_keeps_growing_warns_before_it_is_large(tmp_path):
    monitor, console = make_monitor(tmp_path)
    for step, (train, validation) in enumerate([(0.50, 0.50), (0.60, 0.55), (0.70, 0.62), (0.80, 0.70)]):
        monitor.log_eval(step, {"success_rate": validation, "return_mean": 0.0}, {"success_rate": train, "return_mean": 0.0})
        if step < 3:
            assert "keeps growing" not in console.export_text(clear=False)
    text = console.export_text()
    assert "gap keeps growing" in text and "0.00 -> 0.05 -> 0.08 -> 0.10" in text


def test_a_gap_that_shrinks_again_does_not_warn(tmp_path):
    monitor, console = make_monitor(tmp_path)
    for step, gap in enumerate([0.02, 0.06, 0.04, 0.08, 0.07]):
        monitor.log_eval(step, {"success_rate": 0.5, "return_mean": 0.0}, {"success_rate": 0.5 + gap, "return_mean": 0.0})
    assert "overfitting" not in console.export_text()
