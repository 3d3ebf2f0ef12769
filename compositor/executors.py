"""Where renders run: the local cores or a Dask distributed cluster, behind
one interface (`RenderExecutor`), so `batch` and the mirror's dispatcher
know neither.

- `LocalExecutor`: the process pool of `pool.py` (a worker's death costs the
  one task it held; the pool replaces it).
- `DaskExecutor`: a `distributed.Client` connected to a scheduler. Dask runs
  a lost worker's tasks again elsewhere (its own retries); a task whose
  workers keep dying comes back as `WorkerDied`, a cluster that cannot be
  reached as `ExecutorUnavailable`.

Tasks are plain functions of plain arguments (importable on the workers:
they run the same package) and their answers come back to the caller, who
writes them: nothing assumes storage shared with the workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from compositor.pool import WorkerDied, WorkerError, WorkerPool

__all__ = ["DaskExecutor", "ExecutorUnavailable", "LocalExecutor", "RenderExecutor", "WorkerDied", "WorkerError"]


CAPACITY_TTL_S = 2.0  # how long a cluster's thread count is trusted before the scheduler is asked again


class ExecutorUnavailable(Exception):
    """The executor cannot run tasks now (the cluster's scheduler is gone or unreachable)."""


class RenderExecutor(Protocol):
    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]: ...

    @property
    def capacity(self) -> int:
        """How many tasks can run at once now (workers, or the cluster's threads)."""
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

    def pids(self) -> list[int]:
        return self._pool.pids

    def shutdown(self) -> None:
        self._pool.shutdown()


class DaskExecutor:
    """A Dask distributed cluster, reached through its scheduler's address."""

    def __init__(self, address: str, *, connect_timeout_s: float = 5.0) -> None:
        from distributed import Client

        self.address = address
        try:
            self._client = Client(address, timeout=connect_timeout_s, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ExecutorUnavailable(f"cannot reach the Dask scheduler at {address} ({_reason(exc)})") from None
        self._lock = threading.Lock()
        self._held: set[Any] = set()  # Dask cancels a task whose future nobody holds: these are ours until done
        self._capacity = (0.0, 1)  # (when asked, threads): asking is a round trip to the scheduler

    @property
    def capacity(self) -> int:
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

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        answer: Future[Any] = Future()
        try:
            task = self._client.submit(fn, *args, pure=False)
        except Exception as exc:  # a closed or disconnected client
            answer.set_exception(ExecutorUnavailable(f"the Dask cluster cannot take tasks ({_reason(exc)})"))
            return answer
        with self._lock:
            self._held.add(task)
        task.add_done_callback(lambda done: self._settle(done, answer))
        return answer

    def _settle(self, done: Any, answer: Future[Any]) -> None:
        from distributed import KilledWorker

        with self._lock:
            self._held.discard(done)
        try:
            answer.set_result(done.result())
        except KilledWorker as exc:
            answer.set_exception(WorkerDied(f"the Dask workers running it died, more than once ({exc})"))
        except Exception as exc:
            if done.status == "cancelled" or "cancel" in type(exc).__name__.lower():
                answer.set_exception(ExecutorUnavailable(f"the Dask cluster dropped the task ({_reason(exc)})"))
            else:
                answer.set_exception(WorkerError(f"{type(exc).__name__}: {exc}"))

    def shutdown(self) -> None:
        with self._lock:
            self._held.clear()
        self._client.close(timeout=5)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
