"""Where renders run: the local cores or a Dask distributed cluster, behind
one interface (`RenderExecutor`), so `batch` and the mirror's dispatcher
know neither.

- `LocalExecutor`: the process pool of `pool.py` (a worker's death costs the
  one task it held; the pool replaces it).
- `DaskExecutor`: a `distributed.Client` connected to a scheduler. Dask runs
  a lost worker's tasks again elsewhere (its own retries); a task whose
  workers keep dying comes back as `WorkerDied`. A scheduler that cannot be
  reached at the start is `ExecutorUnavailable` from the constructor; one
  lost later makes every task under way, and every task submitted while it
  is away, come back as `ExecutorUnavailable` (the caller runs it again
  later, uncharged), while the executor reconnects in the background:
  Dask's client tries for its connect timeout, then we try again after 1 s,
  doubling to 30 s, logging each wait and the return.

Tasks are plain functions of plain arguments (importable on the workers:
they run the same package) and their answers come back to the caller.
Only the local pool's tasks may write into this machine's folders
(`local_disk`); nothing assumes storage shared with a cluster's workers: a
task that writes its own result (batch's, into object storage) is handed the
place to write as an argument (a `compositor.storage.Location`, which
pickles without its connection: each worker connects with the credentials
of its own environment) and answers with the outcome only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from functools import partial
from typing import Any, Protocol

from compositor.pool import WorkerDied, WorkerError, WorkerPool

__all__ = ["DaskExecutor", "ExecutorUnavailable", "LocalExecutor", "RenderExecutor", "WorkerDied", "WorkerError"]


log = logging.getLogger(__name__)

CAPACITY_TTL_S = 2.0  # how long a cluster's thread count is trusted before the scheduler is asked again
RECONNECT_BACKOFF_S = (1.0, 30.0)  # the waits between attempts to reach a lost scheduler: doubling, first to last
WATCH_INTERVAL_S = 0.2  # how often the client's connection is looked at


class ExecutorUnavailable(Exception):
    """The executor cannot run tasks now (the cluster's scheduler is gone or unreachable)."""


class RenderExecutor(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]: ...

    @property
    def capacity(self) -> int:
        """How many tasks can run at once now (workers, or the cluster's threads)."""
        ...

    @property
    def local_disk(self) -> bool:
        """Whether every worker runs on this machine, so a task may write into this machine's folders."""
        ...

    def wait_until_available(self, timeout: float) -> bool:
        """Whether it takes tasks, waiting up to `timeout` seconds for that (a cluster reconnecting)."""
        ...

    def shutdown(self) -> None: ...


class LocalExecutor:
    """Worker processes on this machine."""

    def __init__(self, workers: int, *, name: str = "render", initializer: Callable[[], None] | None = None) -> None:
        self._pool = WorkerPool(workers, name=name, initializer=initializer)
        self._workers = workers

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *args)

    @property
    def capacity(self) -> int:
        return self._workers

    @property
    def local_disk(self) -> bool:
        return True

    def pids(self) -> list[int]:
        return self._pool.pids

    def wait_until_available(self, timeout: float) -> bool:
        return True  # its dead workers are replaced by the pool

    def shutdown(self) -> None:
        self._pool.shutdown()


class DaskExecutor:
    """A Dask distributed cluster, reached through its scheduler's address,
    reconnected to when it goes away and comes back (see the module's text)."""

    def __init__(
        self,
        address: str,
        *,
        connect_timeout_s: float = 5.0,
        backoff_s: tuple[float, float] = RECONNECT_BACKOFF_S,
    ) -> None:
        from distributed.utils import LoopRunner

        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._backoff_s = backoff_s
        # One event loop for every client we make: a client that fails to connect leaves its loop's thread behind.
        self._loop_runner = LoopRunner(asynchronous=False)
        self._loop_runner.start()
        try:
            self._client = self._connect()
        except (OSError, TimeoutError, ValueError) as exc:
            self._loop_runner.stop()
            raise ExecutorUnavailable(f"cannot reach the Dask scheduler at {address} ({_reason(exc)})") from None
        self._lock = threading.Lock()
        # Dask cancels a task whose future nobody holds: these are ours until done (each with our answer).
        self._held: dict[Any, Future[Any]] = {}
        self._capacity = (0.0, 1)  # (when asked, threads): asking is a round trip to the scheduler
        self._up = threading.Event()  # set while the client is connected
        self._up.set()
        self._closing = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="dask-reconnect", daemon=True)
        self._watcher.start()

    def _connect(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout=self._connect_timeout_s, set_as_default=False, loop=self._loop_runner.loop)

    @property
    def local_disk(self) -> bool:
        return False  # a worker may be on another machine, with another disk

    @property
    def capacity(self) -> int:
        if not self._up.is_set():
            return 1  # away: one task at a time, each answered at once, until it is back
        asked, threads = self._capacity
        if time.monotonic() - asked < CAPACITY_TTL_S:
            return threads
        try:
            workers = self._client.scheduler_info(n_workers=-1)["workers"].values()
            threads = max(1, sum(int(worker.get("nthreads", 1)) for worker in workers))
        except Exception:  # the scheduler is away: one task at a time until it answers again
            threads = 1
        self._capacity = (time.monotonic(), threads)
        return threads

    def wait_until_available(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        answer: Future[Any] = Future()
        if not self._up.is_set():
            answer.set_exception(self._unreachable())
            return answer
        try:
            task = self._client.submit(fn, *args, pure=False)
        except Exception as exc:  # a closed or disconnected client
            answer.set_exception(ExecutorUnavailable(f"the Dask cluster cannot take tasks ({_reason(exc)})"))
            return answer
        with self._lock:
            self._held[task] = answer
        task.add_done_callback(partial(self._settle, answer))
        if not self._up.is_set():  # lost while it was handed over: the watcher may have answered the others already
            self._drop_held()
        return answer

    def _settle(self, answer: Future[Any], done: Any) -> None:
        """On Dask's callback thread: the task's answer, unless ours was given already (the scheduler lost)."""
        from distributed import KilledWorker

        with self._lock:
            if self._held.pop(done, None) is None:
                return  # answered already, as dropped: a late result is not delivered twice
        if done.status == "cancelled":
            _answer(answer, exc=ExecutorUnavailable(f"the Dask cluster dropped the task ({self._cancel_reason(done)})"))
            return
        try:
            _answer(answer, result=done.result(timeout=60))
        except KilledWorker as exc:
            _answer(answer, exc=WorkerDied(f"the Dask workers running it died, more than once ({exc})"))
        except Exception as exc:
            if done.status == "error":  # the task's own exception, raised on a worker
                _answer(answer, exc=WorkerError(f"{type(exc).__name__}: {exc}"))
            else:  # finished, but its result could not be fetched: the cluster went away meanwhile
                _answer(answer, exc=ExecutorUnavailable(f"the Dask cluster dropped the task ({_reason(exc)})"))

    def _cancel_reason(self, done: Any) -> str:
        if not self._up.is_set() or self._client.status != "running":
            return f"the scheduler at {self.address} is unreachable"
        return "it was cancelled"  # by the scheduler, or by another of its clients

    def _unreachable(self) -> ExecutorUnavailable:
        return ExecutorUnavailable(
            f"the Dask cluster dropped the task (the scheduler at {self.address} is unreachable)"
        )

    def _drop_held(self) -> None:
        """Every task under way answered as dropped: the old client's are gone with its scheduler."""
        with self._lock:
            held = list(self._held.values())
            self._held.clear()
        for answer in held:
            _answer(answer, exc=self._unreachable())

    # --- the scheduler lost and found again -------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_INTERVAL_S):
            try:
                status = self._client.status
                if status == "running":
                    if not self._up.is_set():
                        self._back()
                    continue
                if self._up.is_set():  # Dask's client noticed: it tries to reconnect for its timeout, then closes
                    self._up.clear()
                    log.warning(
                        "lost the Dask scheduler at %s; the tasks under way will run again once it is back",
                        self.address,
                    )
                    self._drop_held()
                if status in ("closing", "closed"):
                    self._reconnect()
            except Exception:  # never let the watcher end while the executor lives
                log.exception("watching the Dask scheduler at %s failed; watching on", self.address)

    def _reconnect(self) -> None:
        """A new client, after a wait that doubles at each failed attempt: one line a wait."""
        delay = self._backoff_s[0]
        while True:
            log.warning("the Dask scheduler at %s is unreachable; trying again in %g s", self.address, delay)
            if self._closing.wait(delay):
                return
            try:
                client = self._connect()
            except Exception:
                delay = min(delay * 2, self._backoff_s[1])
                continue
            with self._lock:
                old, self._client = self._client, client
                closing = self._closing.is_set()
            _close_quietly(old)
            if closing:  # shutdown() closes the client it sees: this one may have come after
                _close_quietly(client)
                return
            self._back()
            return

    def _back(self) -> None:
        self._capacity = (0.0, 1)
        self._up.set()
        log.warning("the Dask scheduler at %s is back; tasks run there again", self.address)

    def shutdown(self) -> None:
        self._closing.set()
        self._watcher.join(timeout=self._connect_timeout_s + 5)
        with self._lock:
            self._held.clear()
            client = self._client
        _close_quietly(client)
        self._loop_runner.stop()


def _answer(answer: Future[Any], *, result: Any = None, exc: BaseException | None = None) -> None:
    """Our future answered, once: one answered already (dropped) or cancelled by its caller is left as it is."""
    with contextlib.suppress(InvalidStateError):
        if exc is None:
            answer.set_result(result)
        else:
            answer.set_exception(exc)


def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close(timeout=5)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
