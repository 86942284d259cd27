"""Turn Ctrl-C / SIGTERM into a clean stop at the next update boundary.

The first signal only sets a flag: the trainer finishes the update it is in, saves a
checkpoint and exits with 128 + the signal number (130 for SIGINT, 143 for SIGTERM). A second
signal stops at once (KeyboardInterrupt); the last periodic checkpoint is still there.
"""

from __future__ import annotations

import os
import signal
import threading

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class StopRequests:
    """Context manager that records the first SIGINT/SIGTERM instead of dying on it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return SIGNAL_NAMES.get(self.signum, str(self.signum))

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write is safe inside a signal handler (printing through rich is not).
        os.write(2, f"\nmmrl: {SIGNAL_NAMES.get(signum, signum)} received: finishing this update, then saving "
                    f"a checkpoint (send it again to stop at once)\n".encode())

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
