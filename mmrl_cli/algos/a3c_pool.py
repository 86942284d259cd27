"""A3C's worker processes as the coordinator sees them: start, credits, reports, deaths, stop.

Start method: ``spawn``. A spawned worker inherits nothing but what it is given (its two pipe
ends, the shared tensors): no copy of the coordinator's threads (TensorBoard's writer, torch's
thread pools, which ``fork`` would copy mid-use), no other worker's pipe ends (so a closed pipe
really means its peer is gone), and the same behaviour on Linux and macOS. The price is a few
seconds of start-up per worker (imports), once per run and per restart.

Each worker has two one-way pipes: credits (coordinator -> worker: how many updates it may make,
and how much of training remains) and reports (worker -> coordinator: one per update). Credits
bound how far the workers run ahead of the coordinator (one train step's worth each) and make
the run's length exact: the pool grants exactly ``budget`` updates in all. A worker's process
sentinel tells the coordinator at once when it dies.

A worker killed by a signal (``kill -9``, the OOM killer) is restarted in its slot with a new
seed and the credits it had not reported, after a warning line naming it, up to
``algo.max_restarts`` restarts in all; then, or when a worker fails with an error, the run stops
with one line naming the worker (`AlgorithmFault`; the last checkpoint is kept).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection, wait

from .a3c_worker import WorkerSpec, run_worker
from .base import AlgorithmFault

START_METHOD = "spawn"
JOIN_SECONDS = 10.0  # how long a stopped worker may take to finish its update before it is killed


@dataclasses.dataclass
class Slot:
    """One worker as the coordinator tracks it."""

    process: multiprocessing.Process
    reports: Connection  # read end
    credits: Connection  # write end
    outstanding: int = 0  # credits granted and not yet reported
    restarts: int = 0  # times this slot's worker was restarted


def signal_name(exitcode: int) -> str:
    """How a process ended, in words: 'killed by SIGKILL' or 'exited with code 1'."""
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class WorkerPool:
    """`count` worker processes that together make exactly `budget` updates.

    `make_spec(index, restarts, credits_end, reports_end)` gives the `WorkerSpec` of the worker
    in slot `index` (`restarts`: how often that slot restarted, for a fresh seed).
    """

    def __init__(self, make_spec: Callable[..., WorkerSpec], count: int, budget: int, credits_per_worker: int,
                 max_restarts: int):
        self.make_spec, self.count, self.budget = make_spec, count, budget
        self.credits_per_worker, self.max_restarts = max(1, credits_per_worker), max_restarts
        self.context = multiprocessing.get_context(START_METHOD)
        self.slots: dict[int, Slot] = {}
        self.granted = 0  # credits granted so far (at most `budget`)
        self.restarts = 0  # restarts so far, all slots together
        self.remaining = 1.0  # the fraction of training remaining, sent with every credit
        self.pending: list[dict] = []  # reports received and not yet gathered

    def start(self) -> None:
        """Start every worker, each with up to `credits_per_worker` credits."""
        for index in range(self.count):
            self.launch(index, self.credits_per_worker)

    @property
    def pids(self) -> list[int]:
        """The live workers' process ids."""
        return [slot.process.pid for slot in self.slots.values()]

    def launch(self, index: int, credits: int, restarts: int = 0) -> None:
        """Start the worker of slot `index` and grant it up to `credits` credits."""
        reports_read, reports_write = self.context.Pipe(duplex=False)
        credits_read, credits_write = self.context.Pipe(duplex=False)
        spec = self.make_spec(index, restarts, credits_read, reports_write)
        process = self.context.Process(target=run_worker, args=(spec,), name=f"mmrl-a3c-worker-{index}", daemon=False)
        process.start()
        reports_write.close()  # the worker's ends: only it holds them now
        credits_read.close()
        self.slots[index] = Slot(process, reports_read, credits_write, restarts=restarts)
        self.grant(index, credits)

    def grant(self, index: int, credits: int) -> None:
        """Give worker `index` up to `credits` more updates, within the budget."""
        credits = min(credits, self.budget - self.granted)
        if credits <= 0:
            return
        slot = self.slots[index]
        slot.credits.send((credits, self.remaining))
        slot.outstanding += credits
        self.granted += credits

    def gather(self, count: int) -> list[dict]:
        """Wait for `count` reports (any workers'); each report earns its worker a new credit.
        Handles dead workers on the way (restart, or `AlgorithmFault`)."""
        reports = self.pending  # received beyond the last gather's count (one wait may bring several)
        while len(reports) < count:
            by_pipe = {slot.reports: index for index, slot in self.slots.items()}
            by_sentinel = {slot.process.sentinel: index for index, slot in self.slots.items()}
            ready = wait([*by_pipe, *by_sentinel])
            for pipe in (r for r in ready if r in by_pipe):
                self.receive(by_pipe[pipe], reports)
            for sentinel in (r for r in ready if r in by_sentinel):
                self.handle_exit(by_sentinel[sentinel], reports)
        reports, self.pending = reports[:count], reports[count:]
        return reports

    def receive(self, index: int, reports: list[dict]) -> bool:
        """Read one report of worker `index` into `reports` (False if its pipe is closed or cut)."""
        slot = self.slots[index]
        try:
            report = slot.reports.recv()
        except Exception:  # noqa: BLE001 - it died (EOF), perhaps mid-message (garbage): its sentinel follows
            return False
        if "error" in report:
            raise AlgorithmFault(f"A3C worker {index} (pid {slot.process.pid}) failed: {report['error']}")
        reports.append(report)
        slot.outstanding -= 1
        self.grant(index, 1)
        return True

    def handle_exit(self, index: int, reports: list[dict]) -> None:
        """Worker `index` has exited: keep the reports it sent, then restart it (killed by a signal,
        restarts left) or stop the run (`AlgorithmFault`)."""
        slot = self.slots[index]
        while slot.reports.poll() and self.receive(index, reports):
            pass
        slot.process.join()
        code, pid = slot.process.exitcode, slot.process.pid
        slot.reports.close()
        slot.credits.close()
        del self.slots[index]
        if code is None or code >= 0:
            raise AlgorithmFault(f"A3C worker {index} (pid {pid}) {signal_name(code or 0)} unexpectedly; "
                                 f"its error, if any, is above")
        if self.restarts >= self.max_restarts:
            raise AlgorithmFault(f"A3C worker {index} (pid {pid}) was {signal_name(code)}; algo.max_restarts="
                                 f"{self.max_restarts} restarts are used up")
        self.restarts += 1
        print(f"mmrl train: warning: A3C worker {index} (pid {pid}) was {signal_name(code)}; restarting it "
              f"(restart {self.restarts} of algo.max_restarts={self.max_restarts})", file=sys.stderr, flush=True)
        lost = slot.outstanding
        self.granted -= lost  # its unreported credits go to its successor
        self.launch(index, lost, slot.restarts + 1)

    def stop(self) -> None:
        """Stop every worker: tell it to, close its pipes (a worker blocked sending gets a broken
        pipe), wait for it to finish its update, kill what is left. Idempotent."""
        for slot in self.slots.values():
            try:
                slot.credits.send(None)
            except OSError:
                pass
            slot.credits.close()
            slot.reports.close()
        for slot in self.slots.values():
            slot.process.join(JOIN_SECONDS)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
        self.slots.clear()
