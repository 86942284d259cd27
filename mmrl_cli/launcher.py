"""Several processes: `mmrl train` with `hardware.nproc`/`nnodes` starts its ranks under torchrun
(`launch_distributed`), after checking that node 0's rendezvous answers (`check_rendezvous`);
a failed rank is reported in one line with the checkpoint to resume from.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from .compose import INFO_FLAGS, MULTIRUN_FLAGS, compose_train_config
from .config import ConfigError, TrainConfig
from .exits import STOP_SIGNAL, fail
from .runs import RUN_DIR_VARIABLE, new_run_dir, resumed_run

RENDEZVOUS_TIMEOUT_S = 5  # how long a node > 0 waits for node 0's rendezvous before saying it is not there


def check_rendezvous(hardware) -> None:
    """On node > 0 of several: node 0's c10d rendezvous (`hardware.rdzv_endpoint`, a torch
    TCPStore that node 0's torchrun hosts) answers within a few seconds; otherwise torchrun would
    wait for it, silently, for many minutes. Start node 0 first. Ranks do not ask again."""
    if hardware.nnodes == 1 or hardware.node_rank == 0 or RUN_DIR_VARIABLE in os.environ or "LOCAL_RANK" in os.environ:
        return
    import datetime

    from torch.distributed import TCPStore

    host, _, port = hardware.rdzv_endpoint.rpartition(":")
    with c_stderr_silenced():  # the store's C++ client logs every retry to stderr
        try:
            TCPStore(host, int(port), is_master=False, wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
            return
        except Exception as e:  # DistNetworkError, DistStoreError, ...: the reason is in the first line
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ConfigError(f"hardware.rdzv_endpoint: no rendezvous answers at {hardware.rdzv_endpoint} within "
                      f"{RENDEZVOUS_TIMEOUT_S} s ({reason}); start node 0 (hardware.node_rank=0) first, or check the address")


@contextlib.contextmanager
def c_stderr_silenced():
    """Send file descriptor 2 (what C/C++ code writes to stderr) to /dev/null inside the block."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of `run_dir`, or None when it has none."""
    from .checkpoint import CheckpointError, find_checkpoint

    try:
        return find_checkpoint(run_dir)[0]
    except CheckpointError:
        return None


def torchrun_command(hardware, args: list[str]) -> list[str]:
    """The `torch.distributed.run` command line that starts `mmrl train <args>` on every rank."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={hardware.nproc}",
               f"--max-restarts={hardware.max_restarts}"]
    if hardware.nnodes == 1:
        command.append("--standalone")  # one machine: a local rendezvous on a free port
    else:
        command += [f"--nnodes={hardware.nnodes}", f"--node-rank={hardware.node_rank}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint={hardware.rdzv_endpoint}", "--rdzv-id=mmrl"]
    return command + ["-m", "mmrl_cli.cli", "train", *args]


FAILURE_FIELDS = re.compile(r"^\s*(rank|exitcode)\s*:\s*(.+?)\s*$")


def failure_cause(lines: list[str]) -> str:
    """Which rank failed and how, from torchrun's failure report (its root cause when it names one)."""
    root = max((i for i, line in enumerate(lines) if "Root Cause" in line), default=None)
    if root is not None:
        lines = lines[root:]
    fields = {}
    for line in lines:
        match = FAILURE_FIELDS.match(line)
        if match and match.group(1) not in fields:
            fields[match.group(1)] = match.group(2).split()[0]
    code = fields.get("exitcode")
    how = f"killed by signal {-int(code)}" if code and code.lstrip("-").isdigit() and int(code) < 0 else f"exit code {code}"
    return f"rank {fields.get('rank', '?')} failed ({how})" if fields else "a rank failed"


def launch_distributed(typed: TrainConfig, args: list[str], run_dir: Path | None = None) -> int:
    """Run `mmrl train <args>` on `hardware.nproc` ranks under torchrun, in `run_dir` (default: a
    new run directory, or the resumed run's); return the exit status."""
    import subprocess

    from .runs import RunLock, RunLocked

    hardware = typed.hardware
    if run_dir is not None:
        pass
    elif typed.resume is not None:
        run_dir = resumed_run(typed.resume, typed.runs_root, args).run_dir
    else:
        try:
            run_dir = new_run_dir(typed)
        except OSError as e:
            fail("train", f"runs_root: could not create a run directory under {typed.runs_root} ({e.strerror})")
    try:  # the launcher holds the run's lock for its ranks (and their elastic restarts)
        lock = RunLock(run_dir).acquire()
    except RunLocked as e:
        fail("train", f"resume: {e}")
    env = {**os.environ, RUN_DIR_VARIABLE: str(run_dir), "OMP_NUM_THREADS": str(hardware.threads or 1)}
    process = subprocess.Popen(torchrun_command(hardware, args), env=env, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []
    try:
        for line in process.stderr:  # rank output passes through; torchrun's failure report is kept
            sys.stderr.write(line)
            tail = (tail + [line])[-400:]
        status = process.wait()
    except KeyboardInterrupt:  # torchrun got a Ctrl-C too (the terminal's process group); a SIGTERM is passed on
        if STOP_SIGNAL["signum"] == signal.SIGTERM:
            process.send_signal(signal.SIGTERM)
        status = process.wait()
    finally:
        lock.release()
    if status not in (0, 130, 143):
        kept = "the last checkpoint is in" if latest_checkpoint(run_dir) else "no checkpoint was written in"
        print(f"mmrl train: error: {failure_cause(tail)} and hardware.max_restarts={hardware.max_restarts} restarts "
              f"are used up; {kept} {run_dir}/checkpoints (resume with: mmrl train resume={run_dir})", file=sys.stderr)
        return 1
    return status


def distributed_launch_config(args: list[str]) -> TrainConfig | None:
    """The typed config of `mmrl train <args>` when it asks for several processes and this process
    is not already one of them; None otherwise."""
    if RUN_DIR_VARIABLE in os.environ or "LOCAL_RANK" in os.environ or INFO_FLAGS.intersection(args) \
            or MULTIRUN_FLAGS.intersection(args):
        return None

    overrides = list(args)
    resume = next((a.split("=", 1)[1] for a in overrides if a.startswith("resume=")), None)
    if resume is not None:
        runs_root = next((a.split("=", 1)[1] for a in overrides if a.startswith("runs_root=")), "runs")
        typed = resumed_run(resume, runs_root, overrides).typed
        typed.resume = resume
    else:
        typed = compose_train_config(overrides)
    return typed if typed.hardware.distributed else None
