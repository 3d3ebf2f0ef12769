"""The `compositor` command: render, validate, serve, batch, submit and models.

Only the dispatch lives here; each command is a module of
`compositor.commands`, holding its arguments and its run. Exit codes: 0 done,
1 invalid body, 2 a source, model or setting that cannot be used, 130 after
Ctrl-C, 143 after SIGTERM (each stops cleanly, and says which).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Any, NoReturn

from compositor.commands import batch, models, render, serve, submit, validate
from compositor.commands.common import EXIT_OK
from compositor.signals import STOP_EXIT_CODES, raise_terminated, stopped_by

# Commands that do one job and end: nothing of theirs needs the interpreter's
# tear-down (see `run`). `serve` is not one: its workers and threads end there.
_ONE_SHOT = frozenset({"render", "validate"})
# Commands that log nothing: they skip importing `logging` (a sixth of `validate`'s start-up).
_SILENT = frozenset({"validate"})


def main(argv: list[str] | None = None) -> int:
    return _dispatch(argv)[0]


def run() -> NoReturn:
    """The `compositor` console script. After a render, the interpreter's
    tear-down (unloading numpy's and OpenCV's modules) takes about 25 ms here
    and buys nothing: the output is written and closed. So a one-shot command
    flushes what it printed and ends the process at once."""
    code, command = _dispatch(None)
    if command not in _ONE_SHOT:
        sys.exit(code)
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away: nothing left to tell it
            stream.flush()
    os._exit(code)


def _dispatch(argv: list[str] | None) -> tuple[int, str]:
    # A field name in a body may be any string, lone surrogates included:
    # what cannot be printed as it is, is printed escaped, never a traceback.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command not in _SILENT:
        import logging

        logging.basicConfig(format="compositor: %(message)s", level=logging.WARNING)
    handler: Any = args.handler
    with contextlib.ExitStack() as held:
        if threading.current_thread() is threading.main_thread():  # where a handler can be set
            held.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, raise_terminated))
        try:
            return int(handler(args)), args.command
        except BrokenPipeError:
            return EXIT_OK, args.command
        except KeyboardInterrupt as stop:  # what the command left to Python: its files are whole or gone
            said = stopped_by(stop)
            print(f"compositor: {said}", file=sys.stderr)
            return STOP_EXIT_CODES[said], args.command


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compositor",
        description="Akool's Background Change API, offline: render and validate request bodies.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (render, validate, serve, batch, submit, models):
        command.add_parser(commands)
    return parser


if __name__ == "__main__":
    run()
