"""`compositor batch`, on the local cores and on Dask clusters (a LocalCluster,
and a scheduler and workers started from the command line, one of them killed)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compositor.cli import main
from tests.conftest import FIXTURES, PEER
from tests.test_controls import FOREGROUND

BIN = Path(sys.executable).parent
ANIMAL = FIXTURES / "images" / "animal-2.jpg"


def body(index: int, side: int = 256, **overrides: Any) -> dict[str, Any]:
    return {
        "canvas_size": f"{side}x{side}",
        "color_code": f"#{(index * 37) % 256:02x}3050",
        "origin_img": str(ANIMAL),
        "modify_origin_img_size": f"{side // 2}x{side // 3}",
        "overlay_origin_x": index % 50,
        "overlay_origin_y": 7,
        **overrides,
    }


def write_jsonl(path: Path, bodies: list[Any]) -> Path:
    path.write_text("".join((b if isinstance(b, str) else json.dumps(b)) + "\n" for b in bodies))
    return path


def report(outdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (outdir / "report.jsonl").read_text().splitlines()]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def batch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "compositor"), "batch", *args], capture_output=True, text=True, timeout=timeout)


def rendered_alone(tmp_path: Path, item: dict[str, Any]) -> np.ndarray:
    request = tmp_path / "alone.json"
    request.write_text(json.dumps(item))
    assert main(["render", str(request), "-o", str(tmp_path / "alone.png")]) == 0
    return pixels(tmp_path / "alone.png")


# --- the local cores -----------------------------------------------------------------------


def test_local_results_equal_compositor_render(tmp_path: Path) -> None:
    items = [body(i) for i in range(4)]
    done = batch(str(write_jsonl(tmp_path / "in.jsonl", items)), "-o", str(tmp_path / "out"), "--workers", "2")
    assert done.returncode == 0, done.stderr
    for index, item in enumerate(items):
        assert np.array_equal(pixels(tmp_path / "out" / f"{index + 1:06d}.png"), rendered_alone(tmp_path, item))


def test_the_report_has_a_line_per_item_and_a_bad_item_stops_nothing(tmp_path: Path) -> None:
    lines = [
        body(1),
        "this is not JSON",
        {"id": "no-source", "body": body(2, origin_img="missing.png")},
        {"id": "bad-size", "body": body(3, canvas_size="12")},
        {"id": "named", "body": body(4)},
        {"id": "named", "body": body(5)},
        {"id": "../escape", "body": body(6)},
    ]
    done = batch(str(write_jsonl(tmp_path / "in.jsonl", lines)), "-o", str(tmp_path / "out"))
    assert done.returncode == 1
    by_id = {line["id"]: line for line in report(tmp_path / "out")}
    assert by_id["000001"]["status"] == "done" and by_id["000001"]["code"] == 1000
    assert by_id["000001"]["output"].endswith("000001.png") and by_id["000001"]["seconds"] > 0
    assert by_id["000002"] == {
        "id": "000002",
        "status": "failed",
        "output": None,
        "seconds": 0.0,
        "code": 1003,
        "errors": [{"field": "body", "message": by_id["000002"]["errors"][0]["message"]}],
    }
    assert by_id["no-source"]["code"] == 1108 and by_id["no-source"]["errors"][0]["field"] == "origin_img"
    assert by_id["bad-size"]["code"] == 1003 and by_id["bad-size"]["errors"][0]["field"] == "canvas_size"
    assert by_id["named"]["status"] == "done"  # the first; the second is refused for its id
    refused = [line for line in report(tmp_path / "out") if line["status"] == "failed"]
    assert sorted(line["id"] for line in refused if line["errors"][0]["field"] == "id") == ["../escape", "named"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000001.png", "named.png"]


def test_a_folder_of_bodies_is_an_input(tmp_path: Path) -> None:
    folder = tmp_path / "bodies"
    folder.mkdir()
    for name in ("a", "b"):
        (folder / f"{name}.json").write_text(json.dumps(body(3, origin_img="../animal.jpg")))
    (tmp_path / "animal.jpg").write_bytes(ANIMAL.read_bytes())  # relative to the body's folder
    done = batch(str(folder), "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert {line["id"] for line in report(tmp_path / "out")} == {"a", "b"}


def test_resume_skips_what_exists_and_renders_the_rest(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(5)])
    assert batch(str(source), "-o", str(tmp_path / "out")).returncode == 0
    for name in ("000002.png", "000004.png"):
        (tmp_path / "out" / name).unlink()
    kept = (tmp_path / "out" / "000001.png").stat().st_mtime_ns
    done = batch(str(source), "-o", str(tmp_path / "out"), "--resume")
    assert done.returncode == 0, done.stderr
    second_run = report(tmp_path / "out")[5:]
    assert sorted((line["id"], line["status"]) for line in second_run) == [
        ("000001", "skipped"),
        ("000002", "done"),
        ("000003", "skipped"),
        ("000004", "done"),
        ("000005", "skipped"),
    ]
    assert (tmp_path / "out" / "000001.png").stat().st_mtime_ns == kept


def test_ctrl_c_stops_cleanly_and_resume_carries_on(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(i, side=1024) for i in range(40)])
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(BIN / "compositor"), "batch", str(source), "-o", str(out), "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 3:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing half-written
    written = {line["id"] for line in report(out)}
    assert {p.stem for p in out.glob("*.png")} == written and 0 < len(written) < 40
    for path in out.glob("*.png"):
        Image.open(path).load()  # every file that is there is whole
    resumed = batch(str(source), "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(out.glob("*.png"))) == 40


def test_ten_thousand_tiny_bodies_run_in_bounded_memory(tmp_path: Path) -> None:
    tiny = {
        "canvas_size": "4x4",
        "color_code": "#336699",
        "origin_img": FOREGROUND,
        "modify_origin_img_size": "2x2",
        "overlay_origin_x": 1,
        "overlay_origin_y": 1,
    }
    source = write_jsonl(tmp_path / "in.jsonl", [tiny] * 10_000)
    process = subprocess.Popen(
        [str(BIN / "compositor"), "batch", str(source), "-o", str(tmp_path / "out"), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # VmHWM, read until the client ends: its own high-water mark since exec (ru_maxrss would carry the
    # high-water mark of this large test process, from which it was forked).
    peak_kib = 0
    while process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        time.sleep(0.05)
    assert process.returncode == 0
    assert len(report(tmp_path / "out")) == 10_000
    # The client holds a few items at a time: its peak is the interpreter and its imports, not the input.
    assert 0 < peak_kib / 1024 < 150, f"the client peaked at {peak_kib / 1024:.0f} MB"


# --- bad input --------------------------------------------------------------------------------------


def test_a_missing_input_is_exit_2_with_one_line(tmp_path: Path) -> None:
    done = batch(str(tmp_path / "nothing.jsonl"), "-o", str(tmp_path / "out"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "no input" in done.stderr


def test_an_unwritable_outdir_is_exit_2_with_one_line(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(1)])
    (tmp_path / "file").write_text("")
    done = batch(str(source), "-o", str(tmp_path / "file" / "out"))
    assert done.returncode == 2 and "cannot write" in done.stderr and "Traceback" not in done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_scheduler_is_exit_2_within_seconds(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(1)])
    started = time.monotonic()
    done = batch(str(source), "-o", str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{free_port()}")
    assert done.returncode == 2 and time.monotonic() - started < 15
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0]


# --- Dask ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    from distributed import LocalCluster

    # Dask's nanny writes its workers' settings (MALLOC_TRIM_THRESHOLD_, OMP_NUM_THREADS) into this
    # process's environment, where every later test's subprocess would inherit them: put it back.
    saved = dict(os.environ)
    try:
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as cluster:
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_local_cluster_gives_the_same_pixels(tmp_path: Path, local_cluster: Any) -> None:
    items = [body(i) for i in range(4)]
    source = write_jsonl(tmp_path / "in.jsonl", items)
    done = batch(str(source), "-o", str(tmp_path / "out"), "--scheduler", local_cluster.scheduler_address)
    assert done.returncode == 0, done.stderr
    for index, item in enumerate(items):
        assert np.array_equal(pixels(tmp_path / "out" / f"{index + 1:06d}.png"), rendered_alone(tmp_path, item))


@pytest.mark.skipif(not (PEER / "car-1.jpg").exists(), reason="no peer fixtures")
def test_each_worker_loads_its_model_once(tmp_path: Path, local_cluster: Any) -> None:
    from distributed import Client

    items = [body(i, origin_img=str(PEER / "car-1.jpg"), removeBg=True) for i in range(6)]
    source = write_jsonl(tmp_path / "in.jsonl", items)
    done = batch(str(source), "-o", str(tmp_path / "out"), "--scheduler", local_cluster.scheduler_address)
    assert done.returncode == 0, done.stderr

    def loads() -> dict[str, int]:
        from compositor.removebg import model_loads

        return model_loads()

    with Client(local_cluster.scheduler_address) as client:
        per_worker = client.run(loads)
    assert all(counts.get("u2netp", 0) <= 1 for counts in per_worker.values()), per_worker
    assert sum(counts.get("u2netp", 0) for counts in per_worker.values()) >= 1


@contextlib.contextmanager
def cli_cluster(workers: int) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`dask scheduler` and `dask worker` processes, started as a user would."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], **quiet
    )
    started = [
        subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"], **quiet
        )
        for _ in range(workers)
    ]
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, started
    finally:
        for process in [*started, scheduler]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_a_worker_killed_mid_batch_loses_nothing(tmp_path: Path) -> None:
    items = [body(i, side=1024) for i in range(30)]
    source = write_jsonl(tmp_path / "in.jsonl", items)
    out = tmp_path / "out"
    with cli_cluster(2) as (address, workers):
        run = subprocess.Popen(
            [str(BIN / "compositor"), "batch", str(source), "-o", str(out), "--scheduler", address],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("*.png"))) < 5:
            time.sleep(0.05)
        os.killpg(workers[0].pid, signal.SIGKILL)
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    lines = report(out)
    assert sorted(line["id"] for line in lines) == [f"{i:06d}" for i in range(1, 31)]  # each once
    assert all(line["status"] == "done" for line in lines)
    assert np.array_equal(pixels(out / "000030.png"), rendered_alone(tmp_path, items[29]))


def test_the_mirror_renders_on_a_cluster(tmp_path: Path) -> None:
    from tests.test_mirror import CONFIG, call, start_server, wait_for

    with cli_cluster(1) as (address, _):
        server = start_server(tmp_path / "data", CONFIG, "--scheduler", address)
        try:
            item = body(9)
            job = call(server, "POST", "/api/open/v3/content/image/bg/replace", json=item)["data"]
            done = wait_for(server, job["_id"])
            assert done["image_status"] == 3, done
            served = pixels(server.data_dir / "results" / f"{job['_id']}.png")
            assert "on the Dask cluster at" in server.log.read_text()
        finally:
            server.stop()
    assert np.array_equal(served, rendered_alone(tmp_path, item))


def test_a_cluster_that_goes_away_leaves_jobs_waiting_and_says_so(tmp_path: Path) -> None:
    from tests.test_mirror import CONFIG, call, start_server

    with cli_cluster(1) as (address, _):
        server = start_server(tmp_path / "data", CONFIG, "--scheduler", address)
    try:  # the cluster is gone now
        job = call(server, "POST", "/api/open/v3/content/image/bg/replace", json=body(1))["data"]
        deadline = time.monotonic() + 30
        log = ""
        while time.monotonic() < deadline and "waits" not in log:
            time.sleep(0.2)
            log = server.log.read_text()
        assert "waits" in log and "Dask" in log
        polled = call(server, "GET", "/api/open/v3/content/image/infobymodelid", params={"image_model_id": job["_id"]})
        assert polled["data"]["image_status"] in (1, 2)  # waiting, not failed
    finally:
        server.stop()


def test_a_serve_with_an_unreachable_scheduler_stops_with_one_line(tmp_path: Path) -> None:
    argv = [str(BIN / "compositor"), "serve", "--port", str(free_port()), "--data-dir", str(tmp_path)]
    argv += ["--scheduler", f"tcp://127.0.0.1:{free_port()}"]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "cannot reach the Dask scheduler" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_plain_progress_lines_when_stderr_is_not_a_terminal() -> None:
    from compositor.batch import Progress

    stream = io.StringIO()
    progress = Progress(3, stream=stream, every_s=0.0)
    for status in ("done", "failed", "skipped"):
        progress.advance(status)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("batch: 3/3, 1 done, 1 failed, 1 skipped")
