"""Live warnings: vanishing/exploding gradients, KL blow-ups, overfitting to training levels."""

import json

import torch
from rich.console import Console

from mmrl_cli.config import TrainConfig
from mmrl_cli.monitor import Monitor, module_grad_norms


def make_monitor(tmp_path):
    console = Console(record=True, width=200)
    cfg = TrainConfig()
    cfg.monitor.tensorboard = False
    return Monitor(cfg, tmp_path, total_steps=100, console=console), console


def test_vanishing_and_exploding_gradients_are_reported(tmp_path):
    monitor, console = make_monitor(tmp_path)
    policy = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    for p in policy[0].parameters():
        p.grad = torch.zeros_like(p)
    for p in policy[1].parameters():
        p.grad = torch.full_like(p, 1e6)
    assert module_grad_norms(policy)["0"] == 0.0
    monitor.check_gradients(policy)
    text = console.export_text()
    assert "vanishing gradients in '0'" in text and "exploding gradients in '1'" in text


def test_kl_blow_up_and_generalization_gap_are_reported(tmp_path):
    monitor, console = make_monitor(tmp_path)
    metrics = {"approx_kl": 0.5, "explained_variance": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "grad_norm": 1.0}
    monitor.log_update(1, 10, metrics, skipped_total=0, sps=100.0, update_seconds=0.1)
    monitor.log_eval(10, {"success_rate": 0.95, "return_mean": 0.9}, {"success_rate": 0.5, "return_mean": 0.4})
    text = console.export_text()
    assert "KL blow-up" in text and "overfitting to training levels" in text


def test_skipped_steps_are_reported_and_metrics_logged_per_update(tmp_path):
    monitor, console = make_monitor(tmp_path)
    metrics = {"approx_kl": 0.01, "explained_variance": 0.0, "learning_rate": 1e-3, "clip_range": 0.2, "grad_norm": 1.0}
    with monitor:
        monitor.log_update(1, 10, metrics, skipped_total=0, sps=100.0, update_seconds=0.1)
        monitor.log_update(2, 20, metrics, skipped_total=3, sps=100.0, update_seconds=0.1)
    assert "skipped 3 gradient step(s)" in console.export_text()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2] and rows[0]["approx_kl"] == 0.01


def test_resumed_monitor_drops_metrics_logged_after_the_checkpoint(tmp_path):
    lines = [json.dumps({"update": u, "step": 10 * u}) for u in (1, 2, 3)] + ['{"update": 4, "st']  # cut by a crash
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    cfg = TrainConfig()
    cfg.monitor.tensorboard = False
    Monitor(cfg, tmp_path, total_steps=100, start=(2, 20)).metrics_file.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]
