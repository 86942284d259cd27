"""How a command ends when it does not finish: one error line and exit status 2 for bad input
(`fail`), or 128 + the signal's number when SIGINT/SIGTERM stopped it (`signals_interrupt`,
`interrupted_status`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


def checked(command: str, validate, check, cfg):
    """`validate(cfg)` (the typed config) once `check(cfg, [])` passes: a command's pre-flight,
    repeated inside its Hydra task (a launcher's job); bad input: one line and exit 2."""
    from .errors import ConfigError

    try:
        typed = validate(cfg)
        check(cfg, [])
    except ConfigError as e:
        fail(command, str(e))
    return typed


def fail(command: str, message: str) -> None:
    """Print one error line and exit with status 2."""
    print(f"mmrl {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
STOP_SIGNAL: dict = {"signum": None}  # the signal `signals_interrupt` turned into KeyboardInterrupt, if any


@contextlib.contextmanager
def signals_interrupt():
    """While a command runs, SIGTERM interrupts it as Ctrl-C does (KeyboardInterrupt) instead of
    killing it outright, so one path stops a command on either (the sweep stops its workers, an
    evaluation writes nothing half-done); `interrupted_status()` is then 143 for SIGTERM, 130 for
    SIGINT. The trainer and `mmrl compress` put their own graceful handlers over this one while
    they run. (A signal during Python's start-up, before this, ends the process the default way.)"""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def interrupt(signum, _frame):
        STOP_SIGNAL["signum"] = signum
        raise KeyboardInterrupt

    STOP_SIGNAL["signum"] = None
    previous = {signum: signal.signal(signum, interrupt) for signum in SIGNAL_NAMES
                if signal.getsignal(signum) is not signal.SIG_IGN}  # nohup's ignored signals stay ignored
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupted_status() -> int:
    """128 + the number of the signal that interrupted the command (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (STOP_SIGNAL["signum"] or signal.SIGINT)
