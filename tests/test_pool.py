"""The worker pool: a death is charged to the task a worker had started, and
to no other."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from compositor.pool import WorkerDied, WorkerPool


def started(pool: WorkerPool, count: int) -> list[int]:
    deadline = time.monotonic() + 120
    while len(pool.pids) < count:
        assert time.monotonic() < deadline, f"waited 120 s for {count} worker(s) to start"
        time.sleep(0.05)
    return pool.pids


def mark_then_sleep(marker: str, seconds: float) -> None:
    """A task that says it has started (the marker file), then runs for `seconds`."""
    Path(marker).touch()
    time.sleep(seconds)


def test_a_task_sent_just_after_its_idle_worker_was_killed_runs_on_a_fresh_one() -> None:
    pool = WorkerPool(1, name="test")
    try:
        [first] = started(pool, 1)
        assert pool.submit(os.getpid).result(timeout=120) == first
        for _ in range(5):  # each time the kill and the next task race
            [idle] = pool.pids
            os.kill(idle, signal.SIGKILL)
            answer = pool.submit(os.getpid).result(timeout=120)
            assert answer != idle
    finally:
        pool.shutdown()


def test_a_worker_killed_during_its_task_fails_that_task(tmp_path: Path) -> None:
    pool = WorkerPool(1, name="test")
    try:
        [worker] = started(pool, 1)
        marker = tmp_path / "started"
        running = pool.submit(mark_then_sleep, str(marker), 300)
        deadline = time.monotonic() + 120
        while not marker.exists():  # killed before it started the task, the task would go to a fresh worker
            assert time.monotonic() < deadline, "waited 120 s for the worker to start its task"
            time.sleep(0.05)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            running.result(timeout=120)
        assert pool.submit(os.getpid).result(timeout=120) != worker
    finally:
        pool.shutdown()
