"""The worker pool: a death is charged to the task a worker had started, and
to no other."""

from __future__ import annotations

import os
import signal
import time

import pytest

from compositor.pool import WorkerDied, WorkerPool


def started(pool: WorkerPool, count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(pool.pids) < count:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.05)
    return pool.pids


def test_a_task_sent_just_after_its_idle_worker_was_killed_runs_on_a_fresh_one() -> None:
    pool = WorkerPool(1, name="test")
    try:
        [first] = started(pool, 1)
        assert pool.submit(os.getpid).result(timeout=30) == first
        for _ in range(5):  # each time the kill and the next task race
            [idle] = pool.pids
            os.kill(idle, signal.SIGKILL)
            answer = pool.submit(os.getpid).result(timeout=30)
            assert answer != idle
    finally:
        pool.shutdown()


def test_a_worker_killed_during_its_task_fails_that_task() -> None:
    pool = WorkerPool(1, name="test")
    try:
        [worker] = started(pool, 1)
        running = pool.submit(time.sleep, 5)
        time.sleep(0.5)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            running.result(timeout=30)
        assert pool.submit(os.getpid).result(timeout=30) != worker
    finally:
        pool.shutdown()
