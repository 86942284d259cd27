"""A3C: the loss on a tiny batch by hand, the Hogwild step, workers that start, apply gradients to
the shared model and stop; Ctrl-C and kill -9 through the real CLI (no process left behind);
resume; bad settings."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from mmrl_cli.algos.a2c import a2c_loss
from mmrl_cli.algos.a3c import A3C
from mmrl_cli.algos.shared_optim import HogwildOptimizer, adopt_state, init_state, share_state, state_tensors
from mmrl_cli.algos.base import Setup
from mmrl_cli.builders import build_env_and_policy
from mmrl_cli.compose import compose_train_config
from mmrl_cli.config import ConfigError, available_cores
from mmrl_cli.distributions import Categorical
from mmrl_cli.rollout import RolloutBuffer

CARTPOLE = ["algo=a3c", "data=cartpole", "model=mlp", "algo.workers=2", "rollout.n_envs=2", "algo.reports_per_step=4",
            "eval.episodes=4", "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]


def test_a3c_loss_on_a_tiny_batch_matches_hand_computed_values():
    buffer = RolloutBuffer(2, 1, {}, torch.device("cpu"))
    buffer.rewards[:, 0] = torch.tensor([1.0, 0.0])
    buffer.values[:, 0] = torch.tensor([0.5, 0.2])
    buffer.last_value[:] = 1.0
    buffer.actions[:, 0] = torch.tensor([0, 1])
    buffer.compute_advantages(gamma=0.9, gae_lambda=1.0)  # n-step returns, as A3C
    assert torch.allclose(buffer.returns[:, 0], torch.tensor([1 + 0.9 * 0.9, 0.9]))  # 1.81, 0.9
    batch = buffer.flat()
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (0.5, 0.5), (0.75, 0.25)
    terms = a2c_loss(Categorical(logits), batch["values"], batch, False, vf_coef=0.5, ent_coef=0.01)
    a0, a1 = 1.81 - 0.5, 0.9 - 0.2
    assert terms["loss_policy"].item() == pytest.approx(-(a0 * math.log(0.5) + a1 * math.log(0.25)) / 2, rel=1e-6)
    assert terms["loss_value"].item() == pytest.approx(0.5 * (a0**2 + a1**2) / 2, rel=1e-6)
    entropy = (math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 2
    assert terms["entropy"].item() == pytest.approx(entropy, rel=1e-6)
    assert terms["loss_entropy"].item() == pytest.approx(-0.01 * entropy, rel=1e-6)


def test_an_episode_end_cuts_the_n_step_return():
    buffer = RolloutBuffer(2, 1, {}, torch.device("cpu"))
    buffer.rewards[:, 0] = torch.tensor([1.0, 2.0])
    buffer.dones[:, 0] = torch.tensor([1.0, 0.0])
    buffer.last_value[:] = 10.0
    buffer.compute_advantages(gamma=0.5, gae_lambda=1.0)
    assert buffer.returns[:, 0].tolist() == [1.0, 2.0 + 0.5 * 10.0]


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_hogwild_step_applies_local_gradients_with_the_shared_statistics(optimizer):
    from mmrl_cli.algos.a2c import make_optimizer, optimizer_over
    from mmrl_cli.config import A3CConfig

    cfg = A3CConfig(optimizer=optimizer, lr=0.1)
    torch.manual_seed(0)
    shared = torch.nn.Linear(3, 2)
    reference = torch.nn.Linear(3, 2)
    reference.load_state_dict(shared.state_dict())
    shared.share_memory()
    coordinator = make_optimizer(cfg, shared)
    init_state(coordinator)
    share_state(coordinator)
    assert all(p.equal(q) for p, q in zip(shared.parameters(), reference.parameters()))  # init changes nothing
    worker = optimizer_over(cfg, [{"params": list(shared.parameters())}])  # a worker's own optimiser object...
    adopt_state(worker, state_tensors(coordinator))  # ...over the same statistics
    local = torch.nn.Linear(3, 2)
    local.load_state_dict(shared.state_dict())
    plain = make_optimizer(cfg, reference)
    x = torch.randn(4, 3)
    for _ in range(2):
        local.load_state_dict(shared.state_dict())
        local.zero_grad()
        local(x).square().sum().backward()
        HogwildOptimizer(worker, list(local.parameters())).step()
        plain.zero_grad()
        reference(x).square().sum().backward()
        plain.step()
    for p, q in zip(shared.parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6)
        assert p.is_shared() and p.grad is None
    key = "square_avg" if optimizer == "rmsprop" else "exp_avg_sq"
    first = next(iter(shared.parameters()))
    assert coordinator.state[first][key].is_shared() and coordinator.state[first][key].abs().sum() > 0  # seen by the coordinator


def build_a3c(overrides: list[str], total_updates: int) -> A3C:
    cfg = compose_train_config(overrides)
    env, policy = build_env_and_policy(cfg, cfg.rollout.n_envs, torch.device("cpu"))
    return A3C.build(Setup(cfg, env, policy, torch.device("cpu"), None, total_updates, cfg.seed))


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    """True when none of `pids` runs any more (zombies count as gone) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("extra", [[], ["model.memory=gru", "model.memory_size=16"]], ids=["mlp", "recurrent"])
def test_workers_start_apply_gradients_to_the_shared_model_and_shut_down(extra):
    algo = build_a3c([*CARTPOLE, *extra], total_updates=3)
    before = [p.detach().clone() for p in algo.policy.parameters()]
    try:
        steps, metrics = algo.train_step()
        pids = algo.pool.pids
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        assert steps == 4 * 2 * 5 and algo.steps_per_update == steps
        assert {"loss_policy", "loss_value", "entropy", "grad_norm", "a3c/staleness"} <= set(metrics)
        assert any(name.startswith("perf/worker_") for name in metrics)
        algo.train_step()
        algo.train_step()  # the last: the budget is spent and the workers stop
        assert algo.pool is None
    finally:
        algo.close()
    assert gone(pids)
    changed = [not p.equal(q) for p, q in zip(algo.policy.parameters(), before)]
    assert all(changed)  # every parameter, in the coordinator's (shared) model
    assert algo.state_dict()["applied"] == 3 * 4  # exactly the budget: 3 steps x 4 worker updates


def test_box_actions_train():
    pytest.importorskip("gymnasium")
    algo = build_a3c(["algo=a3c", "data=gym", "data.env_id=Pendulum-v1", "model=mlp", "algo.workers=1",
                      "rollout.n_envs=2", "algo.reports_per_step=2", "hardware.threads=1"], total_updates=1)
    try:
        steps, metrics = algo.train_step()
    finally:
        algo.close()
    assert steps == 2 * 2 * 5 and math.isfinite(metrics["loss_value"])


def test_bad_worker_counts_are_one_line_naming_the_key():
    for workers in (0, -1, 4 * available_cores() + 1, 10**6):
        with pytest.raises(ConfigError, match=r"^algo\.workers: expected an integer in \[1, "):
            compose_train_config(["algo=a3c", f"algo.workers={workers}"])
    with pytest.raises(ConfigError, match="^hardware.device: algo=a3c"):
        compose_train_config(["algo=a3c", "hardware.device=cuda"])
    assert compose_train_config(["algo=a3c"]).algo.worker_count == available_cores()


# ------------------------------------------------------------------- through the real CLI
def start(cwd: Path, *args) -> subprocess.Popen:
    """`mmrl train` in its own session (so a Ctrl-C can reach its whole process group, as a terminal's does)."""
    return subprocess.Popen([sys.executable, "-m", "mmrl_cli.cli", "train", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(cwd: Path, process: subprocess.Popen, condition, timeout: float = 120) -> Path:
    """Wait until the run's metrics.jsonl rows satisfy `condition`; return the run directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in cwd.glob("runs/*/*/metrics.jsonl"):
            rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if rows and condition(rows):
                return log.parent
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise TimeoutError


def workers_of(process: subprocess.Popen) -> list[psutil.Process]:
    """The run's worker processes (spawned children, not multiprocessing's resource tracker)."""
    return [c for c in psutil.Process(process.pid).children(recursive=True)
            if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]


LONG = [*CARTPOLE, "total_steps=10000000", "checkpoint.every_updates=1000"]


@pytest.mark.slow  # ~26 s (a CLI run interrupted, then resumed); a worker's death is checked in the default suite below
def test_ctrl_c_stops_every_worker_leaves_a_checkpoint_then_resume_continues(tmp_path):
    process = start(tmp_path, *LONG)
    run_dir = wait_for(tmp_path, process, lambda rows: len(rows) >= 3)
    workers = workers_of(process)
    tree = [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    assert len(workers) == 2
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C: the coordinator and its workers
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert gone(tree)  # no worker (nor anything else the run started) is left
    checkpoints = sorted(p for p in (run_dir / "checkpoints").iterdir() if p.name != "latest")
    assert checkpoints, stderr
    stopped_at = json.loads((checkpoints[-1] / "meta.json").read_text())["update"]
    steps = stopped_at * 4 * 2 * 5
    # Resume for two more train steps: it starts from the saved state and finishes.
    resumed = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", f"resume={run_dir}",
                              f"total_steps={steps + 2 * 40}"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["updates"] == stopped_at + 2 and summary["steps"] == steps + 80
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows[-2:]] == [stopped_at + 1, stopped_at + 2]


@pytest.mark.slow  # a second process or a kill/restart cycle: run with -m slow
def test_a_worker_killed_with_sigkill_is_restarted_then_sigterm_stops_the_run(tmp_path):
    process = start(tmp_path, *LONG)
    wait_for(tmp_path, process, lambda rows: len(rows) >= 2)
    victim = workers_of(process)[0]
    victim.kill()  # kill -9
    wait_for(tmp_path, process, lambda rows: rows[-1].get("a3c/restarts") == 1.0)
    workers = workers_of(process)
    assert len(workers) == 2 and victim.pid not in [w.pid for w in workers]
    process.send_signal(signal.SIGTERM)  # SIGTERM to the coordinator alone
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "A3C worker" in stderr and f"(pid {victim.pid}) was killed by SIGKILL; restarting it" in stderr
    assert gone([w.pid for w in workers])


def test_without_restarts_a_killed_worker_stops_the_run_with_one_line(tmp_path):
    process = start(tmp_path, *LONG, "algo.max_restarts=0")
    wait_for(tmp_path, process, lambda rows: len(rows) >= 2)
    workers = workers_of(process)
    workers[0].kill()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    (line,) = [line for line in stderr.splitlines() if "error" in line]
    assert "A3C worker" in line and f"(pid {workers[0].pid}) was killed by SIGKILL; algo.max_restarts=0" in line
    assert gone([w.pid for w in workers])
