"""Live warnings: vanishing/exploding gradients, KL blow-ups, overfitting to training levels."""

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
    monitor.log_update(10, metrics, sps=100.0, update_seconds=0.1)
    monitor.log_eval(10, {"success_rate": 0.95, "return_mean": 0.9}, {"success_rate": 0.5, "return_mean": 0.4})
    text = console.export_text()
    assert "KL blow-up" in text and "overfitting to training levels" in text
