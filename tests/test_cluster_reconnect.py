"""A Dask scheduler killed (-9) and started again on the same address:
`serve --scheduler` and `batch --scheduler` use it again, each job or item
rendered once; a batch whose scheduler stays away stops in one line, and
`--resume` carries on. Everything on loopback."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from compositor.cli import main
from tests.test_batch import (
    BIN,
    body,
    cli_cluster,
    free_port,
    kill_all,
    report,
    start_scheduler,
    start_workers,
    write_jsonl,
)

WAITING = "is unreachable; trying again in"  # the executor's line for each wait


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.1)


def test_serve_uses_a_scheduler_that_comes_back_and_runs_each_job_once(tmp_path: Path) -> None:
    from tests.test_mirror import CONFIG, INFO, SUBMIT, call, start_server, wait_for

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [start_scheduler(port)]
    server = None
    try:
        processes += start_workers(address, 2)
        server = start_server(tmp_path / "data", CONFIG, "--scheduler", address)
        running = server

        def status(job: str) -> int:
            return int(call(running, "GET", INFO, params={"image_model_id": job})["data"]["image_status"])

        before = [call(server, "POST", SUBMIT, json=body(i, side=1024))["data"]["_id"] for i in range(6)]
        wait_until(lambda: any(status(job) == 3 for job in before), 120, "a first job rendered on the cluster")
        kill_all(processes[:1])  # the scheduler, kill -9; jobs are under way on its workers
        after = [call(server, "POST", SUBMIT, json=body(i))["data"]["_id"] for i in range(6, 10)]
        wait_until(lambda: WAITING in running.log.read_text(), 120, "the mirror waiting for its scheduler")
        processes.append(start_scheduler(port))  # a new one, on the same address, with 2 new workers
        processes += start_workers(address, 2)
        for job in before + after:
            assert wait_for(server, job, timeout=240)["image_status"] == 3
        log = server.log.read_text()
    finally:
        if server is not None:
            server.stop()
        kill_all(processes)
    for job in before + after:
        assert log.count(f"job {job} completed") == 1, job  # none twice
    assert sorted(p.stem for p in (tmp_path / "data" / "results").glob("*.png")) == sorted(before + after)
    assert re.search(r"job \S+: the Dask cluster dropped the task \(.+\); it waits", log)  # the README's line
    assert f"the Dask scheduler at {address} is back" in log


def test_batch_finishes_on_a_scheduler_that_comes_back(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(i, side=1024) for i in range(24)])
    out, errors = tmp_path / "out", tmp_path / "stderr.txt"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [start_scheduler(port)]
    try:
        processes += start_workers(address, 2)
        with errors.open("w") as sink:
            run = subprocess.Popen(
                [str(BIN / "compositor"), "batch", str(source), "-o", str(out), "--scheduler", address],
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        try:
            wait_until(lambda: len(list(out.glob("*.png"))) >= 3, 120, "three items written")
            kill_all(processes[:1])
            wait_until(lambda: WAITING in errors.read_text() or run.poll() is not None, 120, "the batch waiting")
            processes.append(start_scheduler(port))
            processes += start_workers(address, 2)
            run.wait(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    finally:
        kill_all(processes)
    stderr = errors.read_text()
    assert run.returncode == 0, stderr
    assert "Traceback" not in stderr and f"the Dask scheduler at {address} is back" in stderr
    lines = report(out)
    assert sorted(line["id"] for line in lines) == [f"{i:06d}" for i in range(1, 25)]  # each once
    assert all(line["status"] == "done" for line in lines)


def test_batch_stops_for_resume_when_its_scheduler_stays_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import compositor.batch

    monkeypatch.setattr(compositor.batch, "RECONNECT_PATIENCE_S", 4.0)
    ids = [f"{i:06d}" for i in range(1, 25)]
    source = write_jsonl(tmp_path / "in.jsonl", [body(i, side=1024) for i in range(24)])
    out = tmp_path / "out"
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [start_scheduler(port)]
    try:
        processes += start_workers(address, 2)
        with ThreadPoolExecutor(1) as pool:
            batch = pool.submit(main, ["batch", str(source), "-o", str(out), "--scheduler", address])
            wait_until(lambda: len(list(out.glob("*.png"))) >= 3 or batch.done(), 120, "three items written")
            kill_all(processes)  # the scheduler and its workers, for good
            code = batch.result(timeout=120)
    finally:
        kill_all(processes)
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "Traceback" not in stderr
    stops = [line for line in stderr.splitlines() if line.startswith("compositor: stopped")]
    assert len(stops) == 1 and "did not come back within 4 s" in stops[0] and "--resume" in stops[0], stderr
    first = report(out)
    assert 3 <= len(first) < 24 and all(line["status"] == "done" for line in first)

    with cli_cluster(2) as (again, _):
        assert main(["batch", str(source), "-o", str(out), "--scheduler", again, "--resume"]) == 0
    second = report(out)[len(first) :]
    assert sorted(line["id"] for line in second) == ids
    done = [line["id"] for line in first + second if line["status"] == "done"]
    assert sorted(done) == ids  # each rendered once, over both runs


def test_the_executor_waits_for_its_scheduler_doubling_and_is_used_again(caplog: pytest.LogCaptureFixture) -> None:
    from compositor.executors import DaskExecutor, ExecutorUnavailable

    caplog.set_level("WARNING", logger="compositor.executors")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [start_scheduler(port)]
    try:
        processes += start_workers(address, 1)
        executor = DaskExecutor(address, connect_timeout_s=2, backoff_s=(0.25, 1.0))
        try:
            assert executor.submit(sum, [1, 2]).result(timeout=60) == 3
            kill_all(processes)  # scheduler and worker
            waits = [f"{address} is unreachable; trying again in {delay} s" for delay in ("0.25", "0.5", "1", "2")]

            def logged() -> str:
                return "\n".join(record.getMessage() for record in caplog.records)

            # one line a wait, doubling from the first to the last, then the last again
            wait_until(lambda: logged().count(waits[2]) >= 2, 120, "waits doubling to the last, twice")
            assert logged().count(waits[0]) == logged().count(waits[1]) == 1 and waits[3] not in logged()
            with pytest.raises(ExecutorUnavailable, match="the Dask cluster dropped the task"):
                executor.submit(sum, [1, 2]).result(timeout=60)  # answered at once (not after a reconnect)
            assert executor.capacity == 1 and not executor.wait_until_available(0.1)
            processes = [start_scheduler(port)]
            processes += start_workers(address, 1)
            assert executor.wait_until_available(120)
            assert executor.submit(sum, [3, 4]).result(timeout=60) == 7
            assert f"the Dask scheduler at {address} is back" in logged()
        finally:
            executor.shutdown()
    finally:
        kill_all(processes)
