"""Signals noted instead of acted on, for as long as a block runs.

Python runs a signal's handler in the main thread, whichever thread the
kernel gave the signal to, so only a handler swapped in from the main thread
holds a signal back for the whole process (a thread's signal mask does not:
another thread may take it). Used where a stop must not land mid-step (a
batch's result and its report line) and where a stop asked for is a clean
exit rather than a traceback (`serve`). SIGTERM, what a container's stop,
systemd and `timeout` send, is raised as `Terminated`, a KeyboardInterrupt,
so that every command stops on it as cleanly as on Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def signals_noted(*signums: int) -> Iterator[list[int]]:
    """While the block runs, each of `signums` that arrives is appended to the
    list yielded instead of being handled; the previous handlers are back
    when it ends. Off the main thread (where no handler can be set) nothing
    is held back."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {signum: signal.signal(signum, lambda signum, _frame: received.append(signum)) for signum in signums}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be and handled as it is; the exit status is 143, not 130."""


# What a command says it was stopped by, and the status it then exits with.
STOP_EXIT_CODES = {"interrupted": 130, "terminated": 143}


def stopped_by(stop: KeyboardInterrupt | int) -> str:
    """'terminated' for a Terminated or SIGTERM's number, else 'interrupted' (Ctrl-C)."""
    return "terminated" if isinstance(stop, Terminated) or stop == signal.SIGTERM else "interrupted"


def raise_terminated(signum: int, frame: object) -> None:
    """The SIGTERM handler every command runs under (see `Terminated`)."""
    raise Terminated
