"""Run lifecycle: golden (bit-identical) resume, signals, kill -9, NaN steps, checkpoint files."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from mmrl_cli import trainer
from mmrl_cli.algos import ppo as ppo_module
from mmrl_cli.checkpoint import CheckpointError, find_checkpoint, load_state, save_checkpoint, verify
from mmrl_cli.cli import CONF_DIR
from mmrl_cli.config import validate

GOTO = ["algo.total_steps=384", "algo.n_envs=8", "algo.n_steps=8", "algo.batch_size=32", "algo.n_epochs=2",
        "eval.every_steps=192", "eval.episodes=8", "checkpoint.every_updates=2", "monitor.progress=false"]
CARTPOLE = ["data=cartpole", "model=mlp", "algo.total_steps=1024", "algo.n_envs=4", "algo.n_steps=32", "algo.n_epochs=4",
            "algo.batch_size=64", "eval.every_steps=512", "eval.episodes=4", "checkpoint.every_updates=3",
            "monitor.progress=false", "monitor.tensorboard=false"]


def config(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(compose("train", overrides=list(overrides)))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_numbers(a, b) -> bool:
    """Equal, with NaN equal to NaN (JSON rows of metrics)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_numbers(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_numbers(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def same_model(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs of both small configs."""
    runs = {}
    for name, overrides in (("goto", GOTO), ("cartpole", CARTPOLE)):
        run_dir = tmp_path_factory.mktemp(f"reference-{name}")
        trainer.train(config(*overrides), run_dir)
        runs[name] = run_dir
    return runs


def signal_on_call(module, name: str, call, monkeypatch, signum=signal.SIGTERM):
    """Send this process `signum` on the `call`-th call(s) of `module.name`."""
    original = getattr(module, name)
    calls = {"n": 0}
    when = {call} if isinstance(call, int) else set(call)

    def hooked(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in when:
            signal.raise_signal(signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, hooked)


# Where the stop lands: the n-th action sampled (mid-rollout) or the n-th PPO loss (mid-update).
STOP_POINTS = [
    ("goto", trainer, "sample_actions", 3), ("goto", trainer, "sample_actions", 29),
    ("goto", ppo_module, "ppo_losses", 5), ("goto", ppo_module, "ppo_losses", 18),
    ("cartpole", trainer, "sample_actions", 70), ("cartpole", ppo_module, "ppo_losses", 9),
]


@pytest.mark.parametrize("data,module,name,call", STOP_POINTS, ids=[f"{d}-{n}-{c}" for d, _, n, c in STOP_POINTS])
def test_golden_resume_is_bit_identical(references, tmp_path, monkeypatch, data, module, name, call):
    overrides = GOTO if data == "goto" else CARTPOLE
    signal_on_call(module, name, call, monkeypatch)
    stopped = trainer.train(config(*overrides), tmp_path)
    total_updates = json.loads((references[data] / "summary.json").read_text())["updates"]
    assert stopped["stopped_by"] == "SIGTERM" and stopped["updates"] < total_updates
    monkeypatch.undo()
    checkpoint, notes = find_checkpoint(tmp_path)
    assert notes == [] and checkpoint.name == f"{stopped['updates']:08d}"
    finished = trainer.train(config(*overrides), tmp_path, resume_from=checkpoint)
    assert finished["stopped_by"] is None
    assert same_numbers(metrics(tmp_path), metrics(references[data]))
    assert same_model(tmp_path / "model.safetensors", references[data] / "model.safetensors")
    assert same_numbers(finished["evaluations"][-1]["heldout"],
                        json.loads((references[data] / "summary.json").read_text())["evaluations"][-1]["heldout"])


def test_ctrl_c_stops_after_the_update_and_a_second_one_stops_at_once(tmp_path, monkeypatch):
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    signal_on_call(trainer, "sample_actions", 40, monkeypatch, signum=signal.SIGINT)  # in update 2's rollout
    summary = trainer.train(config(*CARTPOLE), tmp_path / "once")
    assert summary["stopped_by"] == "SIGINT" and summary["updates"] == 2
    assert find_checkpoint(tmp_path / "once")[0].name == "00000002"
    monkeypatch.undo()
    signal_on_call(trainer, "sample_actions", (40, 45), monkeypatch, signum=signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C does not wait for the update to end
        trainer.train(config(*CARTPOLE), tmp_path / "twice")
    assert not (tmp_path / "twice" / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_resume_continues_from_each_kept_checkpoint(references, tmp_path):
    """Resuming from an older checkpoint (not just the latest) also reproduces the run."""
    trainer.train(config(*CARTPOLE, "checkpoint.keep_last=10"), tmp_path)
    oldest = sorted(p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[0]
    newer = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())[1:]
    trainer.train(config(*CARTPOLE), tmp_path, resume_from=oldest)
    assert same_model(tmp_path / "model.safetensors", references["cartpole"] / "model.safetensors")
    # The abandoned timeline's checkpoints are kept aside, not mixed with the new ones.
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "checkpoints" / "abandoned").iterdir()) == newer


# ------------------------------------------------------------------- through the real CLI
CLI_RUN = ["data=cartpole", "model=mlp", "algo.total_steps=3072", "algo.n_envs=4", "algo.n_steps=32", "algo.n_epochs=4",
           "algo.batch_size=64", "eval.every_steps=100000", "eval.episodes=4", "checkpoint.every_updates=1",
           "monitor.progress=false", "monitor.tensorboard=false", "hardware.threads=1"]


def start(cwd: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmrl_cli.cli", "train", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for_updates(run_dir_glob, cwd: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> Path:
    """Wait until a run under cwd has logged `count` updates; return its directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in cwd.glob(run_dir_glob):
            log = path / "metrics.jsonl"
            if log.exists() and log.read_text().count("\n") >= count:
                return path
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise TimeoutError


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory) -> Path:
    """An uninterrupted `mmrl train` run of CLI_RUN, through the CLI."""
    cwd = tmp_path_factory.mktemp("cli-reference")
    reference = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", *CLI_RUN, "run_name=ref"], cwd=cwd,
                               capture_output=True, text=True, timeout=240)
    assert reference.returncode == 0, reference.stderr
    (run_dir,) = cwd.glob("runs/*/*-ref")
    return run_dir


def test_sigterm_checkpoints_and_cli_resume_matches_uninterrupted(tmp_path, cli_reference):
    process = start(tmp_path, *CLI_RUN, "run_name=term")
    run_dir = wait_for_updates("runs/*/*-term", tmp_path, 5, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert f"resume with: mmrl train resume={run_dir.relative_to(tmp_path)}" in stderr
    assert verify(find_checkpoint(run_dir)[0])["update"] < 24  # stopped early, with a checkpoint
    resumed = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", f"resume={run_dir}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert same_model(run_dir / "model.safetensors", cli_reference / "model.safetensors")
    assert same_numbers(metrics(run_dir), metrics(cli_reference))


def test_kill_9_at_random_moments_then_resume_latest_matches(tmp_path, cli_reference):
    """kill -9 three times at random moments (checkpoints every update, so some land in writes)."""
    generator = torch.Generator().manual_seed(0)
    process = start(tmp_path, *CLI_RUN, "run_name=killed")
    for kill in range(3):
        run_dir = wait_for_updates("runs/*/*-killed", tmp_path, 3 + 6 * kill, process)
        time.sleep(float(torch.rand((), generator=generator)) * 0.3)
        process.kill()
        process.wait()
        process = start(tmp_path, "resume=latest")
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr
    assert same_model(run_dir / "model.safetensors", cli_reference / "model.safetensors")
    assert same_numbers(metrics(run_dir), metrics(cli_reference))


# --------------------------------------------------------------- crash inside a write
def checkpoint_args(update: int):
    model = {"w": torch.full((4, 4), float(update))}
    state = {"counter": update, "optimizer": {0: {"step": torch.tensor(float(update))}}, "rng": torch.arange(5)}
    return model, state


def count_syscalls(tmp_path) -> int:
    calls = {"n": 0}
    real_fsync, real_replace = os.fsync, os.replace

    def counting(real):
        def wrapped(*args):
            calls["n"] += 1
            return real(*args)
        return wrapped

    os.fsync, os.replace = counting(real_fsync), counting(real_replace)
    try:
        save_checkpoint(tmp_path / "count", 1, *checkpoint_args(1), "seed: 1\n", keep_last=3)
    finally:
        os.fsync, os.replace = real_fsync, real_replace
    return calls["n"]


def test_kill_9_inside_a_checkpoint_write_never_leaves_a_loadable_half_checkpoint(tmp_path):
    """SIGKILL the writer at every fsync/rename of a checkpoint write; the loader must still work."""
    for kill_at in range(1, count_syscalls(tmp_path) + 1):
        root = tmp_path / f"run{kill_at}"
        save_checkpoint(root / "checkpoints", 1, *checkpoint_args(1), "seed: 1\n", keep_last=3)
        pid = os.fork()
        if pid == 0:  # child: die by SIGKILL at the kill_at-th fsync or rename of writing checkpoint 2
            calls = {"n": 0}
            real_fsync, real_replace = os.fsync, os.replace

            def dying(real):
                def wrapped(*args):
                    calls["n"] += 1
                    if calls["n"] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args)
                return wrapped

            os.fsync, os.replace = dying(real_fsync), dying(real_replace)
            save_checkpoint(root / "checkpoints", 2, *checkpoint_args(2), "seed: 1\n", keep_last=3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        found, _ = find_checkpoint(root)
        meta = verify(found)
        state = load_state(found)
        assert found.name in ("00000001", "00000002") and state["counter"] == meta["update"]
        assert load_file(str(found / "model.safetensors"))["w"][0, 0] == meta["update"]


def test_latest_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for update in (1, 2, 3):
        save_checkpoint(root, update, *checkpoint_args(update), "seed: 1\n", keep_last=5)
    with open(root / "00000003" / "state.safetensors", "r+b") as f:  # truncate the newest
        f.truncate(20)
    found, notes = find_checkpoint(tmp_path)
    assert found.name == "00000002" and "00000003" in notes[0]
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        find_checkpoint(tmp_path, "00000003")  # asked for by name: refused, no fallback


def test_keep_last_prunes_old_checkpoints_and_leftover_temp_dirs(tmp_path):
    root = tmp_path / "checkpoints"
    (root / ".tmp-00000009").mkdir(parents=True)  # a write that died
    for update in range(1, 6):
        save_checkpoint(root, update, *checkpoint_args(update), "seed: 1\n", keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["00000004", "00000005", "latest"]
    assert (root / "latest").read_text().strip() == "00000005"


def test_state_round_trips_optimizer_and_rng_exactly(tmp_path):
    policy = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    policy(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "plain": [1, 2.5, None, "x"]}
    save_checkpoint(tmp_path / "checkpoints", 7, policy.state_dict(), state, "seed: 1\n", keep_last=1)
    loaded = load_state(tmp_path / "checkpoints" / "00000007")
    assert loaded["plain"] == [1, 2.5, None, "x"] and torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])


# ----------------------------------------------------------------------------- numerics
def test_non_finite_step_leaves_parameters_and_optimizer_unchanged():
    from mmrl_cli.algos.ppo import PPO
    from mmrl_cli.builders import build_env_and_policy
    from mmrl_cli.rollout import RolloutBuffer

    cfg = config(*CARTPOLE)
    env, policy = build_env_and_policy(cfg, 4, torch.device("cpu"))
    algo = PPO(cfg.algo, policy, total_updates=10, autocast=contextlib.nullcontext)
    buffer = RolloutBuffer(32, 4, env.observation_spec, torch.device("cpu"))
    obs = env.reset(seed=0)
    for t in range(32):
        buffer.store_obs(t, obs)
        obs, reward, terminated, truncated, _ = env.step(torch.randint(0, 2, (4,)))
        buffer.store(t, torch.zeros(4, dtype=torch.int64), torch.full((4,), -0.69), torch.zeros(4), reward, terminated | truncated)
    buffer.compute_advantages(torch.zeros(4), 0.98, 0.8)
    algo.update(buffer)  # one good update, so the optimiser has state
    params = {k: v.clone() for k, v in policy.state_dict().items()}
    moments = {k: v.clone() for k, v in algo.optimizer.state_dict()["state"][0].items()}
    buffer.rewards[3, 1] = float("nan")
    buffer.compute_advantages(torch.zeros(4), 0.98, 0.8)
    result = algo.update(buffer)
    assert result["skipped_steps"] == cfg.algo.n_epochs * 2 and algo.skipped_in_a_row == cfg.algo.n_epochs * 2
    assert all(torch.equal(params[k], v) for k, v in policy.state_dict().items())
    assert all(torch.equal(moments[k], v) for k, v in algo.optimizer.state_dict()["state"][0].items())


def test_nan_rewards_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(tmp_path, monkeypatch):
    from mmrl_cli.envs.cartpole import CartPoleEnv

    real_step = CartPoleEnv.step
    calls = {"n": 0}

    def poisoned(self, actions):
        calls["n"] += 1
        obs, reward, terminated, truncated, info = real_step(self, actions)
        if calls["n"] > 32 * 4:  # from the 5th update on, every reward is NaN
            reward = torch.full_like(reward, float("nan"))
        return obs, reward, terminated, truncated, info

    monkeypatch.setattr(CartPoleEnv, "step", poisoned)
    cfg = config(*CARTPOLE, "checkpoint.every_updates=2", "numerics.max_skipped_in_a_row=12", "monitor.tensorboard=true")
    with pytest.raises(trainer.NumericalFault, match="gradient steps in a row had a non-finite loss or gradient"):
        trainer.train(cfg, tmp_path)
    # Update 5 skips all its 8 steps (4 epochs x 2 minibatches) and goes on; update 6 makes it 16 in a row.
    assert [row["skipped_steps"] for row in metrics(tmp_path)] == [0, 0, 0, 0, 8]
    found, _ = find_checkpoint(tmp_path)
    assert found.name == "00000004"  # the last checkpoint, from before the fault, is kept
    assert list((tmp_path / "tb").iterdir())  # numerics/skipped_steps went to TensorBoard too


def test_a_generator_state_from_another_device_type_reseeds_instead_of_crashing():
    from mmrl_cli.rng import load_generator_state

    generator = torch.Generator()
    assert load_generator_state(generator, torch.Generator().manual_seed(3).get_state())
    cuda_like = torch.arange(16, dtype=torch.uint8)  # a CUDA (Philox) state is 16 bytes; a CPU one is not
    assert not load_generator_state(generator, cuda_like)
    again = torch.Generator()
    load_generator_state(again, cuda_like)
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=again))  # deterministic reseed
