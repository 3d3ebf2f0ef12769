"""Render processes that outlive each other's deaths.

`concurrent.futures.ProcessPoolExecutor` breaks for good when one worker
dies (kill -9, the OOM killer): every task in flight fails, and so does every
later `submit`. Here each worker process is owned by one thread of the
parent that hands it one task at a time, so a death costs exactly the task
that worker held (its future fails with `WorkerDied`), and the thread starts
a fresh process before taking the next task. The caller decides whether the
task runs again.

Workers end with the process that started them: each watches its parent and
exits when it is gone, so a server killed with -9 leaves no orphan renders.
They leave stopping to it: a Ctrl-C in a terminal reaches every process of
the group, and a worker ignores it (the parent, which got it too, stops its
workers); a SIGTERM that arrives while a worker runs a task waits until the
task's answer is sent. A pool that is shutting down replaces no worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

# How often a worker looks for its parent: the longest an orphan lives.
PARENT_CHECK_S = 0.5
DIED = "the render process ended before it finished (killed, or out of memory)"


class WorkerDied(Exception):
    """The process running the task ended before answering (killed, or out of memory)."""


class WorkerError(Exception):
    """The task raised in the worker; the message names the exception."""


class _Closed(Exception):
    """A worker ended while the pool shuts down: it is not replaced."""


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def _name_process(name: str) -> None:
    """The name `ps` and /proc/PID/comm show (15 bytes at most), so an
    operator can tell render workers from preview workers; Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME


def _worker_main(tasks: Connection, parent: int, name: str, initializer: Callable[[], None] | None) -> None:
    # SIGINT arrives blocked (the owning thread blocks it, and a child inherits its mask): a Ctrl-C during the
    # start is dropped here, never a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _name_process(f"{name}-worker")
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer()
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args = task
        tasks.send(("started", None))  # from here on, a death is this task's
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # a SIGTERM now ends us after the answer
        try:
            answer: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as exc:  # the parent gets a message, not an unpicklable exception
            answer = ("raised", f"{type(exc).__name__}: {exc}")
        try:
            tasks.send(answer)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


_Task = tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]


class WorkerPool:
    """`workers` processes, each started at once and again after it dies.

    `submit(fn, *args)` queues a call of a module-level function with
    picklable arguments and returns its `Future`."""

    def __init__(self, workers: int, *, name: str = "render", initializer: Callable[[], None] | None = None) -> None:
        self._context = multiprocessing.get_context("spawn")  # the server has threads: fork would copy them
        self._initializer = initializer
        self._name = name
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._closed = False
        self._processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self.deaths = 0
        self._threads = [
            threading.Thread(target=self._own_worker, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pids(self) -> list[int]:
        """The worker processes alive now (for tests and the soak benchmark)."""
        return sorted(p.pid for p in list(self._processes.values()) if p.pid is not None and p.is_alive())

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("the pool is shut down")
        future: Future[Any] = Future()
        self._tasks.put((fn, args, future))
        return future

    def shutdown(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        deadline = time.monotonic() + 5  # for tasks in flight to finish, all together
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        still_running = list(self._processes.values())
        for process in still_running:  # still rendering: the server is going away
            process.kill()
        for process in still_running:  # gone before this returns: nothing of theirs is written after it
            process.join(timeout=5)

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        # The worker starts with SIGINT blocked (a child inherits this thread's mask) until it ignores it
        # (`_worker_main`): a Ctrl-C while it imports is dropped. The resource tracker first, as starting
        # it unblocks SIGINT in the thread that starts it.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(theirs, os.getpid(), self._name, self._initializer),
            name="compositor-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        return process, ours

    def _own_worker(self, index: int) -> None:
        try:
            process, conn = self._start_or_wait()
        except _Closed:
            return
        self._processes[index] = process
        future: Future[Any] | None = None
        try:
            while (task := self._tasks.get()) is not None:
                fn, args, future = task
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    process, conn = self._hand_over(index, process, conn, fn, args)
                except (WorkerDied, WorkerError) as exc:
                    future.set_exception(exc)
                    continue
                try:
                    kind, value = conn.recv()
                except (EOFError, OSError):
                    process, conn = self._replace(index, process, conn)
                    future.set_exception(WorkerDied(DIED))
                    continue
                except Exception as exc:  # an answer that cannot be unpickled
                    future.set_exception(WorkerError(f"the worker's answer could not be read ({type(exc).__name__})"))
                    continue
                if kind == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(WorkerError(value))
        except _Closed:  # a worker ended during the shutdown: its task (if any) fails, nothing replaces it
            if future is not None and not future.done():
                future.set_exception(WorkerDied(DIED))
        finally:
            self._processes.pop(index, None)
            self._stop(process, conn)

    def _hand_over(
        self,
        index: int,
        process: multiprocessing.process.BaseProcess,
        conn: Connection,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        """Send a task and wait for the worker to say it started it. A worker
        that dies before that (killed while idle, say) has not started the
        task: no one's fault, so a fresh worker gets it. The process and
        connection now running it are returned."""
        for _ in range(3):
            try:
                conn.send((fn, args))
                conn.recv()  # ("started", None)
                return process, conn
            except (EOFError, OSError):
                process, conn = self._replace(index, process, conn)
            except Exception as exc:  # could not be pickled (too deep, say): the worker never saw it
                raise WorkerError(f"the task could not be sent to a worker ({type(exc).__name__})") from None
        raise WorkerDied("render processes keep ending before they start a task")

    def _replace(
        self, index: int, process: multiprocessing.process.BaseProcess, conn: Connection
    ) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        """A fresh process in place of one that ended; `_Closed` while the pool shuts down."""
        process.join(timeout=5)
        conn.close()
        if self._closed:
            raise _Closed
        self.deaths += 1
        log.warning("render worker %d ended (exit code %s); starting another", index, process.exitcode)
        process, conn = self._start_or_wait()
        self._processes[index] = process
        return process, conn

    def _start_or_wait(self) -> tuple[multiprocessing.process.BaseProcess, Connection]:
        """A fresh worker; if one cannot be started (no memory, no pids), try again with backoff."""
        delay = 0.5
        while True:
            if self._closed:
                raise _Closed
            try:
                return self._start()
            except OSError as exc:
                log.error("cannot start a render worker (%s); trying again in %.0f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    @staticmethod
    def _stop(process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        with contextlib.suppress(OSError):
            conn.send(None)
        conn.close()
        process.join(timeout=3)
        if process.is_alive():
            process.kill()
            process.join(timeout=3)
