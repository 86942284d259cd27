"""Several ranks with torch.distributed (gloo on CPU): the same updates as one rank with all the
envs, decisions taken on reduced values, the torchrun command line, elastic restarts."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmrl_cli.launcher import failure_cause, torchrun_command
from mmrl_cli.config import A2CConfig, HardwareConfig, MlpConfig, PPOConfig
from mmrl_cli.distributed import Distributed
from mmrl_cli.models import build_policy
from mmrl_cli.rollout import RolloutBuffer

SPEC = {"vector": ((4,), torch.float32)}
N_ENVS, N_STEPS = 8, 16  # per rank; the one-rank reference plays 2 * N_ENVS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rollout_for(envs: slice, policy, logprob_shift: float = 0.0) -> RolloutBuffer:
    """A fixed synthetic rollout of 2 * N_ENVS envs, cut to the envs `envs` selects."""
    g = torch.Generator().manual_seed(0)
    total = 2 * N_ENVS
    obs = torch.randn(N_STEPS, total, 4, generator=g)
    actions = torch.randint(0, 2, (N_STEPS, total), generator=g)
    with torch.no_grad():
        logits, values = policy({"vector": obs.flatten(0, 1)})
        logprobs = torch.log_softmax(logits, -1).gather(1, actions.reshape(-1, 1)).reshape(N_STEPS, total)
    rewards = torch.rand(N_STEPS, total, generator=g)
    dones = (torch.rand(N_STEPS, total, generator=g) < 0.1).float()
    last = torch.randn(total, generator=g)
    buffer = RolloutBuffer(N_STEPS, envs.stop - envs.start, SPEC, torch.device("cpu"))
    buffer.obs["vector"].copy_(obs[:, envs])
    buffer.actions.copy_(actions[:, envs])
    buffer.logprobs.copy_(logprobs[:, envs] + logprob_shift)
    buffer.values.copy_(values.reshape(N_STEPS, total)[:, envs])
    buffer.rewards.copy_(rewards[:, envs])
    buffer.dones.copy_(dones[:, envs])
    buffer.last_value.copy_(last[envs])
    return buffer


def make_algo(kind: str, world_size: int, dist: Distributed | None = None):
    from mmrl_cli.algos import ALGOS

    torch.manual_seed(0)
    policy = build_policy(MlpConfig(), SPEC, 2, 1)
    if kind == "ppo":  # algo.batch_size is per rank: each rank's whole rollout, averaged = the reference's whole rollout
        cfg = PPOConfig(n_epochs=3, batch_size=2 * N_ENVS * N_STEPS // world_size, clip_value=0.2)
    else:
        cfg = A2CConfig(normalize_advantages=True)
    algo = ALGOS[kind](cfg, policy, 10, __import__("contextlib").nullcontext)
    if dist is not None:
        algo.distributed = algo.gradient.distributed = dist
    return algo, policy


def rank_main(rank: int, port: int, out: str, kind: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist = Distributed.from_env("cpu")
    try:
        if kind in ("ppo", "a2c"):
            algo, policy = make_algo(kind, 2, dist)
            for _ in range(4):
                algo.update(rollout_for(slice(rank * N_ENVS, (rank + 1) * N_ENVS), policy))
            torch.save({k: v.clone() for k, v in policy.state_dict().items()}, f"{out}/rank{rank}.pt")
        elif kind == "early_stop":  # only rank 1's data is far off-policy: alone, rank 0 would not stop
            algo, policy = make_algo("ppo", 2, dist)
            algo.cfg.target_kl = 0.1
            shift = 1.0 if rank == 1 else 0.0
            metrics = algo.update(rollout_for(slice(rank * N_ENVS, (rank + 1) * N_ENVS), policy, shift))
            torch.save(torch.tensor([metrics["stopped_early"], metrics["minibatches"]]), f"{out}/rank{rank}.pt")
        elif kind == "skip":  # a non-finite loss on rank 1 alone: both ranks skip the step
            algo, policy = make_algo("a2c", 2, dist)
            rollout = rollout_for(slice(rank * N_ENVS, (rank + 1) * N_ENVS), policy)
            if rank == 1:
                rollout.rewards[0, 0] = float("nan")
            before = [p.detach().clone() for p in policy.parameters()]
            metrics = algo.update(rollout)
            unchanged = all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
            torch.save(torch.tensor([metrics["skipped_steps"], float(unchanged)]), f"{out}/rank{rank}.pt")
    finally:
        dist.close()


def run_ranks(kind: str, tmp_path: Path) -> list:
    mp.spawn(rank_main, args=(free_port(), str(tmp_path), kind), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("kind", ["ppo", "a2c"])
def test_two_ranks_make_the_same_updates_as_one_rank_with_all_the_envs(kind, tmp_path):
    algo, policy = make_algo(kind, 1)
    for _ in range(4):
        algo.update(rollout_for(slice(0, 2 * N_ENVS), policy))
    rank0, rank1 = run_ranks(kind, tmp_path)
    for name, reference in policy.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name  # ranks never diverge
        torch.testing.assert_close(rank0[name], reference, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(reference, make_algo(kind, 1)[1].state_dict()[name])
               for name, reference in policy.state_dict().items())  # the updates did change the weights


def test_ranks_agree_on_the_target_kl_early_stop(tmp_path):
    rank0, rank1 = run_ranks("early_stop", tmp_path)
    assert rank0.tolist() == rank1.tolist() == [1.0, 0.0]  # both stopped before the first step


def test_ranks_agree_to_skip_a_step_that_is_not_finite_on_one_of_them(tmp_path):
    rank0, rank1 = run_ranks("skip", tmp_path)
    assert rank0.tolist() == rank1.tolist() == [1.0, 1.0]  # skipped, weights untouched, on both


def test_one_rank_is_the_identity():
    dist = Distributed()
    loss = torch.tensor(2.0)
    assert not dist.enabled and dist.is_main and dist.seed(5) == 5
    assert dist.average_gradients([], loss) is loss
    assert dist.any(True) and not dist.any(False)
    assert dist.mean_metrics({"a": 1.0}) == {"a": 1.0} and dist.gather([1]) == [1]


# ----------------------------------------------------------------------------- launcher
def test_torchrun_command_for_one_and_several_machines():
    one = torchrun_command(HardwareConfig(nproc=4, max_restarts=2), ["hardware=ddp", "seed=3"])
    assert one[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--max-restarts=2", "--standalone",
                       "-m", "mmrl_cli.cli", "train", "hardware=ddp", "seed=3"]
    many = torchrun_command(HardwareConfig(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500"), ["hardware=ddp"])
    assert many[1:-4] == ["-m", "torch.distributed.run", "--nproc-per-node=8", "--max-restarts=0", "--nnodes=2",
                          "--node-rank=1", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29500", "--rdzv-id=mmrl"]


def test_failure_cause_names_the_rank_and_the_signal():
    report = ["[0]:", "  time      : 2026-11-24_19:00:00", "  host      : box", "  rank      : 1 (local_rank: 1)",
              "  exitcode  : -9 (pid: 123)"]
    assert failure_cause(report) == "rank 1 failed (killed by signal 9)"
    assert failure_cause(["  rank      : 0 (local_rank: 0)", "  exitcode  : 1 (pid: 5)"]) == "rank 0 failed (exit code 1)"
    both = ["Failures:", "  rank      : 0 (local_rank: 0)", "  exitcode  : -15 (pid: 6)", "Root Cause (first observed failure):",
            "  rank      : 1 (local_rank: 1)", "  exitcode  : -6 (pid: 7)"]
    assert failure_cause(both) == "rank 1 failed (killed by signal 6)"


BAD = [
    (["hardware=ddp", "hardware.nproc=0"], "hardware.nproc: expected an integer in [1, 1024]"),
    (["hardware=ddp", "hardware.node_rank=1"], "hardware.node_rank: expected an integer in [0, 0]"),
    (["hardware=ddp", "hardware.rdzv_endpoint=nohost"], "hardware.rdzv_endpoint: expected host:port"),
    (["hardware=ddp", "hardware.backend=mpi"], "hardware.backend: expected one of auto, gloo, nccl"),
    (["hardware=ddp", "hardware.max_restarts=-1"], "hardware.max_restarts: expected an integer in [0, 1000]"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[a[1] for a, _ in BAD])
def test_bad_distributed_settings_are_one_line_exit_2(args, needle, tmp_path, monkeypatch, capsys):
    from mmrl_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *args])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------- through the CLI
DDP_CARTPOLE = ["exp=cartpole-ppo", "hardware=ddp", "total_steps=8192", "eval.every_steps=4096", "eval.episodes=4",
                "monitor.tensorboard=false", "checkpoint.every_updates=4"]


def rank_pids(rank: int) -> list[int]:
    """PIDs of `mmrl train` processes running as `rank` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mmrl_cli.cli\0train" in cmdline and f"RANK={rank}".encode() in environ and b"MMRL_RUN_DIR" in b"".join(environ):
            pids.append(int(entry.name))
    return pids


def test_two_ranks_train_through_the_cli_and_rank_0_alone_writes(run_mmrl):
    result = run_mmrl("train", *DDP_CARTPOLE, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (run_mmrl.cwd / "runs").glob("20*/*") if p.is_dir()]
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8192 and summary["updates"] == 16  # 2 ranks x 8 envs x 32 steps per update
    assert result.stdout.count("mmrl train: summary") == 1  # one summary table: rank 0's
    # resume with another number of ranks: one rank goes on from the two ranks' checkpoint
    resumed = run_mmrl("train", f"resume={run_dir}", "total_steps=10240", "hardware=cpu", timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 10240 and summary["updates"] == 16 + 8  # then 8 envs x 32 steps per update


@pytest.mark.slow  # ~20 s: two ranks through torchrun
def test_eval_stop_at_stops_every_rank_at_the_same_update(run_mmrl):
    result = run_mmrl("train", *DDP_CARTPOLE, "eval.stop_at=0.0", timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = [p for p in (run_mmrl.cwd / "runs").glob("20*/*") if p.is_dir()]
    summary = __import__("json").loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4096 and summary["reached_stop_at"]  # at the first evaluation, on both ranks
    assert "reached eval.stop_at=0.0 after 4,096 steps: done" in result.stdout


@pytest.mark.slow  # ~15 s, and needs the optional launcher plugin (pip install -e '.[cluster]')
def test_a_hydra_launcher_job_starts_its_own_ranks(run_mmrl):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = run_mmrl("train", "-m", "seed=1", "hydra/launcher=submitit_local", *DDP_CARTPOLE, "total_steps=4096",
                      timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((run_mmrl.cwd / "runs" / "multirun").glob("*/*/[0-9]"))
    assert [p.name for p in jobs] == ["0"]
    for job in jobs:
        summary = __import__("json").loads((job / "summary.json").read_text())
        assert summary["steps"] == 4096 and summary["updates"] == 8  # 2 ranks per job


@pytest.mark.slow  # ~15 s of torchrun restarts; the two-rank CLI test stays in the default suite
def test_a_rank_killed_by_sigkill_restarts_from_the_checkpoint_then_runs_out_of_restarts(run_mmrl):
    args = [*DDP_CARTPOLE, "total_steps=60000", "hardware.max_restarts=1"]
    process = subprocess.Popen([sys.executable, "-m", "mmrl_cli.cli", "train", *args], cwd=run_mmrl.cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = run_mmrl.cwd / "runs"

    def kill_rank_1_after_a_checkpoint(after: set) -> set:
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and process.poll() is None
            checkpoints = {p.name for p in runs.glob("20*/*/checkpoints/0*")}
            pids = rank_pids(1)
            if checkpoints - after and pids:
                os.kill(pids[0], signal.SIGKILL)
                return checkpoints
            time.sleep(0.2)

    first = kill_rank_1_after_a_checkpoint(set())
    time.sleep(3)
    kill_rank_1_after_a_checkpoint(first)  # the restarted job checkpoints again: kill it once more
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 1
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("mmrl train: error: rank 1 failed (killed by signal 9) and hardware.max_restarts=1"), stderr[-3000:]
    assert "resuming" in stderr.lower() or "from checkpoint" in stderr.lower(), stderr[-3000:]
