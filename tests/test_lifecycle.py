"""Run lifecycle: golden (bit-identical) resume, signals, kill -9, NaN steps, checkpoint files."""

import contextlib
import errno
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

from mmrl_cli import rollout as rollout_module
from mmrl_cli import trainer
from mmrl_cli.algos import a2c as a2c_module
from mmrl_cli.algos import ppo as ppo_module
from mmrl_cli.checkpoint import CheckpointError, find_checkpoint, load_state, save_checkpoint, verify
from mmrl_cli.compose import CONF_DIR
from mmrl_cli.config import validate

GOTO = ["total_steps=384", "rollout.n_envs=8", "rollout.n_steps=8", "algo.batch_size=32", "algo.n_epochs=2",
        "eval.every_steps=192", "eval.episodes=8", "checkpoint.every_updates=2", "monitor.progress=false"]
CARTPOLE = ["exp=cartpole-ppo", "total_steps=1024", "rollout.n_envs=4", "rollout.n_steps=32", "algo.n_epochs=4",
            "algo.batch_size=64", "eval.every_steps=512", "eval.episodes=4", "checkpoint.every_updates=3",
            "monitor.progress=false", "monitor.tensorboard=false"]
A2C_GOTO = ["algo=a2c", "total_steps=400", "rollout.n_envs=8", "eval.every_steps=200", "eval.episodes=8",
            "checkpoint.every_updates=3", "monitor.progress=false", "monitor.tensorboard=false"]
A2C_CARTPOLE = ["exp=cartpole-a2c", "total_steps=2000", "eval.every_steps=1000", "eval.episodes=4",
                "checkpoint.every_updates=7", "monitor.progress=false", "monitor.tensorboard=false"]
CONFIGS = {"goto": GOTO, "cartpole": CARTPOLE, "a2c-goto": A2C_GOTO, "a2c-cartpole": A2C_CARTPOLE}


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


def without_wall_time(evaluations: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "wall_seconds"} for e in evaluations]


def same_model(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs of the small configs."""
    runs = {}
    for name, overrides in CONFIGS.items():
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


# Where the stop lands: the n-th action sampled (mid-rollout) or the n-th loss (mid-update). CartPole's
# PPO takes the fast path (closed-form loss gradient), goto's plain autograd.
STOP_POINTS = [
    ("goto", rollout_module, "sample_actions", 3), ("goto", rollout_module, "sample_actions", 29),
    ("goto", ppo_module, "ppo_loss", 5), ("goto", ppo_module, "ppo_loss", 18),
    ("cartpole", rollout_module, "sample_actions", 70), ("cartpole", ppo_module, "ppo_loss_and_output_gradients", 9),
    ("a2c-goto", rollout_module, "sample_actions", 17), ("a2c-goto", a2c_module, "a2c_loss", 6),
    ("a2c-cartpole", rollout_module, "sample_actions", 61), ("a2c-cartpole", a2c_module, "a2c_loss", 22),
]


@pytest.mark.parametrize("data,module,name,call", STOP_POINTS, ids=[f"{d}-{n}-{c}" for d, _, n, c in STOP_POINTS])
def test_golden_resume_is_bit_identical(references, tmp_path, monkeypatch, data, module, name, call):
    overrides = CONFIGS[data]
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
    reference_summary = json.loads((references[data] / "summary.json").read_text())
    assert same_numbers(without_wall_time(finished["evaluations"]), without_wall_time(reference_summary["evaluations"]))
    assert finished["heldout_success_rate"] == reference_summary["heldout_success_rate"]


def test_ctrl_c_stops_after_the_update_and_a_second_one_stops_at_once(tmp_path, monkeypatch):
    handler_before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN under a background job
    (tmp_path / "once").mkdir()
    (tmp_path / "twice").mkdir()
    signal_on_call(rollout_module, "sample_actions", 40, monkeypatch, signum=signal.SIGINT)  # in update 2's rollout
    summary = trainer.train(config(*CARTPOLE), tmp_path / "once")
    assert summary["stopped_by"] == "SIGINT" and summary["updates"] == 2
    assert find_checkpoint(tmp_path / "once")[0].name == "00000002"
    monkeypatch.undo()
    signal_on_call(rollout_module, "sample_actions", (40, 45), monkeypatch, signum=signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # the second Ctrl-C does not wait for the update to end
        trainer.train(config(*CARTPOLE), tmp_path / "twice")
    assert not (tmp_path / "twice" / "checkpoints").exists()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


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
CLI_RUN = ["exp=cartpole-ppo", "total_steps=3072", "rollout.n_envs=4", "rollout.n_steps=32", "algo.n_epochs=4",
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
    model = {"policy": {"w": torch.full((4, 4), float(update))}}
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


class Pruned(torch.nn.Module):
    """A module whose saved width may be smaller than its built one (as a structurally pruned layer's)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(4, 4))

    def check_checkpoint_shapes(self, saved):
        rows, cols = saved.get("w", (0, 0))
        return None if cols == 4 and 0 < rows <= 4 else f"w has shape {[rows, cols]}, expected [<=4, 4]"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.w = torch.nn.Parameter(state_dict[prefix + "w"].clone())


def test_checkpoints_hold_named_modules_each_checked_by_its_own_rule(tmp_path):
    from mmrl_cli.checkpoint import load_modules

    teacher = torch.nn.Linear(3, 2)
    modules = {"policy": {"w": torch.ones(2, 4)}, "teacher": teacher.state_dict()}
    path = save_checkpoint(tmp_path, 3, modules, {"counter": 3}, "seed: 1\n", keep_last=2)
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "meta.json", "model.safetensors",
                                                      "state.safetensors", "teacher.safetensors"]
    pruned, fresh_teacher = Pruned(), torch.nn.Linear(3, 2)
    load_modules(path, {"policy": pruned, "teacher": fresh_teacher})
    assert pruned.w.shape == (2, 4) and torch.equal(fresh_teacher.weight, teacher.weight)
    with pytest.raises(CheckpointError, match="does not match the configured model"):
        load_modules(path, {"teacher": torch.nn.Linear(3, 5)})  # the default rule: exact names and shapes
    with pytest.raises(CheckpointError, match="holds no 'world_model' module"):
        load_modules(path, {"world_model": torch.nn.Linear(1, 1)})
    save_checkpoint(tmp_path, 4, {"policy": {"w": torch.ones(6, 4)}}, {}, "seed: 1\n", keep_last=2)
    with pytest.raises(CheckpointError, match=r"expected \[<=4, 4\]"):
        load_modules(tmp_path / "00000004", {"policy": Pruned()})
    meta = json.loads((path / "meta.json").read_text())
    meta["modules"]["teacher"] = "../../evil.safetensors"  # a module file outside the checkpoint is refused
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not plain <name>.safetensors"):
        verify(path)


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
    save_checkpoint(tmp_path / "checkpoints", 7, {"policy": policy.state_dict()}, state, "seed: 1\n", keep_last=1)
    loaded = load_state(tmp_path / "checkpoints" / "00000007")
    assert loaded["plain"] == [1, 2.5, None, "x"] and torch.equal(loaded["rng"], state["rng"])
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(fresh.state_dict()["state"][0][key], optimizer.state_dict()["state"][0][key])


# ----------------------------------------------------------------------------- numerics
def test_non_finite_step_leaves_parameters_and_optimizer_unchanged():
    from mmrl_cli.algos import ALGOS
    from mmrl_cli.builders import build_env_and_policy
    from mmrl_cli.rollout import Collector

    for overrides in (CARTPOLE, A2C_CARTPOLE, [*CARTPOLE, "hardware.fast_path=false"]):
        cfg = config(*overrides)
        env, policy = build_env_and_policy(cfg, 4, torch.device("cpu"))
        algo = ALGOS[cfg.algo.type](cfg.algo, policy, 10, contextlib.nullcontext, cfg.hardware.fast_path)
        collector = Collector(env, policy, cfg.rollout.n_steps, torch.device("cpu"), 0, contextlib.nullcontext)
        buffer = collector.collect()
        algo.update(buffer)  # one good update, so the optimiser has state
        params = {k: v.clone() for k, v in policy.state_dict().items()}
        moments = {k: v.clone() for k, v in algo.gradient.optimizer.state_dict()["state"][0].items()}
        buffer.rewards[3, 1] = float("nan")
        result = algo.update(buffer)
        steps = cfg.algo.n_epochs * 2 if cfg.algo.type == "ppo" else 1
        assert result["skipped_steps"] == steps and algo.gradient.skipped_in_a_row == steps, overrides
        assert all(torch.equal(params[k], v) for k, v in policy.state_dict().items())
        assert all(torch.equal(moments[k], v) for k, v in algo.gradient.optimizer.state_dict()["state"][0].items())


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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    skipped = EventAccumulator(str(tmp_path / "tb")).Reload().Scalars("numerics/skipped_steps")
    assert [event.value for event in skipped] == [0, 0, 0, 0, 8]  # TensorBoard counts them too


def test_a_generator_state_from_another_device_type_reseeds_instead_of_crashing():
    from mmrl_cli.rng import load_generator_state

    generator = torch.Generator()
    assert load_generator_state(generator, torch.Generator().manual_seed(3).get_state())
    cuda_like = torch.arange(16, dtype=torch.uint8)  # a CUDA (Philox) state is 16 bytes; a CPU one is not
    assert not load_generator_state(generator, cuda_like)
    again = torch.Generator()
    load_generator_state(again, cuda_like)
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=again))  # deterministic reseed


# --------------------------------------------------------------------- callbacks and resume
class StopAtUpdate:
    """A callback that stops the run once it has made `update` updates (as an Optuna pruner would)."""

    def __init__(self, update: int):
        self.update, self.seen = update, []

    def on_update(self, progress, metrics):
        self.seen.append((progress.update, metrics["learning_rate"]))
        if progress.update >= self.update:
            raise trainer.StopTraining(f"stop at update {self.update}")


class RecordEvaluations:
    def __init__(self):
        self.results = []

    def on_evaluation(self, progress, results):
        self.results.append((progress.steps, results["validation"]["success_rate"]))


@pytest.mark.parametrize("data", ["cartpole", "a2c-goto"])
def test_a_callback_stop_leaves_a_resumable_checkpoint_and_the_resumed_run_matches(references, tmp_path, data):
    stopper, watcher = StopAtUpdate(5), RecordEvaluations()
    summary = trainer.train(config(*CONFIGS[data]), tmp_path, callbacks=[stopper, watcher])
    assert summary["stopped_by"] == "StopAtUpdate: stop at update 5" and summary["updates"] == 5
    assert [u for u, _ in stopper.seen] == [1, 2, 3, 4, 5]
    assert math.isnan(summary["heldout_success_rate"])  # held-out levels are for runs that got to their end
    assert find_checkpoint(tmp_path)[0].name == "00000005"
    finished = trainer.train(config(*CONFIGS[data]), tmp_path, resume_from=find_checkpoint(tmp_path)[0],
                             callbacks=[watcher])
    assert finished["stopped_by"] is None
    assert same_numbers(metrics(tmp_path), metrics(references[data]))
    assert same_model(tmp_path / "model.safetensors", references[data] / "model.safetensors")
    evaluations = json.loads((references[data] / "summary.json").read_text())["evaluations"]
    assert watcher.results == [(e["step"], e["validation"]["success_rate"]) for e in evaluations]


def test_eval_stop_at_ends_the_run_at_the_first_validation_success_that_reaches_it(tmp_path):
    """eval.stop_at: the run ends at that evaluation as at its last update (held-out levels scored,
    a checkpoint, summary["reached_stop_at"]); an unreachable target trains to total_steps."""
    summary = trainer.train(config(*GOTO, "eval.stop_at=0.0"), tmp_path / "reached")
    assert summary["reached_stop_at"] and summary["stopped_by"] is None and summary["steps"] == 192
    assert math.isfinite(summary["heldout_success_rate"]) and len(summary["evaluations"]) == 1
    assert find_checkpoint(tmp_path / "reached")[0].name == "00000003"
    never = trainer.train(config(*GOTO, "eval.stop_at=1.0", "eval.episodes=4"), tmp_path / "never")
    assert never["steps"] == 384 and not never["reached_stop_at"]


def test_tensorboard_after_a_resume_has_each_update_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [*CARTPOLE, "monitor.tensorboard=true"]
    trainer.train(config(*overrides), tmp_path, callbacks=[StopAtUpdate(4)])
    (tmp_path / "metrics.jsonl").write_text((tmp_path / "metrics.jsonl").read_text())
    trainer.train(config(*overrides), tmp_path, resume_from=find_checkpoint(tmp_path)[0])
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    steps = [event.step for event in events.Scalars("losses/value")]
    assert steps == [128 * u for u in range(1, 9)]  # 8 updates of 4 x 32 steps, each once, in order
    assert [event.step for event in events.Scalars("eval/heldout_success_rate")] == [1024]


def test_resuming_with_a_longer_total_continues_the_lr_schedule_smoothly(tmp_path, capsys):
    short = [*CARTPOLE, "algo.lr_schedule=linear"]  # 8 updates
    trainer.train(config(*short), tmp_path, callbacks=[StopAtUpdate(4)])
    before = [r["learning_rate"] for r in metrics(tmp_path)]
    assert before == pytest.approx([1e-3 * (8 - u) / 8 for u in range(4)])
    # twice as long: from where it was (0.5 of the LR), falling linearly to 0 at the new end; no jump
    trainer.train(config(*short, "total_steps=2048"), tmp_path, resume_from=find_checkpoint(tmp_path)[0])
    after = [r["learning_rate"] for r in metrics(tmp_path)[4:]]
    assert after == pytest.approx([1e-3 * 0.5 * (16 - u) / 12 for u in range(4, 16)])
    # a finished run's linear schedule is at 0: training longer says so
    trainer.train(config(*short, "total_steps=2560"), tmp_path, resume_from=find_checkpoint(tmp_path)[0])
    assert "annealed to 0" in capsys.readouterr().err


# ------------------------------------------------------- faults the run cannot fix itself
@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EACCES], ids=["disk-full", "read-only"])
def test_a_failed_checkpoint_write_is_one_line_exit_1_and_resume_is_bit_identical(tmp_path, cli_reference, monkeypatch,
                                                                                  capsys, error):
    """The disk fills (or the checkpoint directory becomes unwritable) at the 6th checkpoint: one
    line with the errno text, the path and how to resume; exit 1; the resumed run equals an
    uninterrupted one."""
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    real_save, calls = trainer.save_checkpoint, []

    def failing_save(root, *args, **kwargs):
        calls.append(root)
        if len(calls) == 6:
            raise OSError(error, os.strerror(error), str(root / ".tmp-00000006"))
        return real_save(root, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", failing_save)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *CLI_RUN, "run_name=full"])
    assert exit_info.value.code == 1
    (run_dir,) = Path("runs").glob("*/*-full")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("mmrl train: error: ") and os.strerror(error) in lines[0], lines[0]
    assert ".tmp-00000006" in lines[0] and "00000005" in lines[0], lines[0]
    assert lines[0].endswith(f"resume with: mmrl train resume={run_dir})"), lines[0]
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    main(["train", f"resume={run_dir}"])
    assert same_model(run_dir / "model.safetensors", cli_reference / "model.safetensors")
    assert same_numbers(metrics(run_dir), metrics(cli_reference))


@pytest.mark.slow  # a second process or a kill/restart cycle: run with -m slow
def test_a_second_process_cannot_train_in_a_run_that_is_in_use(tmp_path):
    """While one process trains in a run, resuming it elsewhere is refused with one line naming the
    holder (exit 2); the run's files are untouched by the refused process; once the first process
    has stopped, resume works and metrics.jsonl has each update once."""
    first = start(tmp_path, *CLI_RUN, "total_steps=1000000", "run_name=busy")
    run_dir = wait_for_updates("runs/*/*-busy", tmp_path, 2, first)
    second = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", f"resume={run_dir}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=240)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"is in use by another mmrl process (pid {first.pid} on " in lines[0], lines[0]
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    done = json.loads((run_dir / "summary.json").read_text())["steps"]
    resumed = subprocess.run([sys.executable, "-m", "mmrl_cli.cli", "train", f"resume={run_dir}", f"total_steps={done + 256}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    updates = [row["update"] for row in metrics(run_dir)]
    assert updates == list(range(1, len(updates) + 1))


def test_the_run_lock_is_released_at_the_end_and_by_the_death_of_its_holder(tmp_path):
    """train() holds <run>/.lock while it runs and lets go at the end; a holder killed with -9
    leaves the file but not the lock (the kernel drops it); this process may take over a lock an
    earlier train() that raised still holds."""
    from mmrl_cli.runs import RunLock, RunLocked, check_unlocked, holder

    run_dir = tmp_path / "run"
    trainer.train(config(*CARTPOLE, "total_steps=256"), run_dir)
    assert (run_dir / ".lock").is_file() and holder(run_dir) is None
    held = RunLock(run_dir).acquire()
    assert f"pid {os.getpid()} on " in (run_dir / ".lock").read_text()
    check_unlocked(run_dir, "resume")  # this process's own lock (a train() that raised): it may take it over
    RunLock(run_dir).acquire().release()
    assert held.file is None and holder(run_dir) is None
    script = f"from mmrl_cli.runs import RunLock; lock = RunLock({str(run_dir)!r}).acquire(); import time; time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while f"pid {other.pid} on " not in (holder(run_dir) or "") and time.monotonic() < deadline:
        time.sleep(0.05)  # it takes the lock, then writes its name into the file
    assert f"pid {other.pid} on " in holder(run_dir)
    with pytest.raises(RunLocked):
        RunLock(run_dir).acquire()
    with pytest.raises(RunLocked, match=f"resume: .* is in use by another mmrl process \\(pid {other.pid} on "):
        check_unlocked(run_dir, "resume")
    other.kill()
    other.wait()
    assert holder(run_dir) is None
    RunLock(run_dir).acquire().release()


def test_a_tampered_training_state_is_refused_before_anything_is_loaded_or_written(references, tmp_path):
    """The algorithm's and the env's saved state are checked against what the live objects hold
    (tensor dtypes and shapes, kinds of values): a refused checkpoint changes nothing in the run."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mmrl_cli.checkpoint import sha256

    run_dir = tmp_path / "run"
    shutil.copytree(references["goto"], run_dir)
    checkpoint, _ = find_checkpoint(run_dir)
    tensors = load_file(str(checkpoint / "state.safetensors"))
    key = next(k for k in sorted(tensors) if k.startswith("state.collector.env.") and tensors[k].dim() >= 2)
    tensors[key] = tensors[key][:-1].clone()  # one env fewer
    save_file(tensors, str(checkpoint / "state.safetensors"))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["sha256"]["state.safetensors"] = sha256(checkpoint / "state.safetensors")
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}
    with pytest.raises(CheckpointError, match=f"collector.{key.removeprefix('state.collector.')} is a"):
        trainer.train(config(*GOTO, "total_steps=768"), run_dir, resume_from=checkpoint)
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")} == before
