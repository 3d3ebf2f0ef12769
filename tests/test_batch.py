"""`compositor batch`, on the local cores and on Dask clusters (a LocalCluster,
and a scheduler and workers started from the command line, one of them killed)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from compositor.cli import main
from compositor.folderlock import FolderLock
from tests.conftest import FIXTURES, PEER, loopback_cluster
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


def test_on_the_local_pool_the_workers_write_the_folder_and_only_outcomes_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib
    import pickle

    from compositor.batch import BatchRun

    seen: list[Any] = []
    real = BatchRun._settle

    def spy(self: BatchRun, future: Future[Any], *args: Any) -> None:
        seen.append(future.result(timeout=0))
        real(self, future, *args)

    monkeypatch.setattr(BatchRun, "_settle", spy)
    out = tmp_path / "out"
    assert main(["batch", str(write_jsonl(tmp_path / "in.jsonl", [body(i, side=512) for i in range(3)])), "-o",
                 str(out), "--workers", "2"]) == 0, capsys.readouterr().err  # fmt: skip
    assert len(seen) == 3
    for outcome in seen:
        assert outcome.png is None and outcome.partial is not None and len(pickle.dumps(outcome)) < 1024
    for line in report(out):
        data = Path(line["output"]).read_bytes()
        assert (line["size"], line["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "000002.png", "000003.png", "report.jsonl"]


def test_partial_results_a_killed_run_left_are_removed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / ".000001.png.compositor-k1ll3d00.partial").write_bytes(b"\x89PNG cut")  # a worker's, on the local pool
    (out / ".000007.png.compositor-k1ll3d_1").write_bytes(b"\x89PNG cut")  # the client's (on Dask), killed mid-write
    users = ["notes.txt", ".bashrc.original", ".notes.20240101", ".photo.png.original", ".keep.partial"]
    for name in users:  # a user's files stay, hidden ones too, whatever their names look like
        (out / name).write_text("a user's file")
    done = batch(str(write_jsonl(tmp_path / "in.jsonl", [body(1)])), "-o", str(out), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["000001.png", "report.jsonl", *users])


def test_a_second_batch_into_a_folder_in_use_stops_in_one_line_and_touches_nothing(tmp_path: Path) -> None:
    """A batch still writing `out` (its lock held here, as its process holds it) keeps its partial results and its
    report: a second run into the same folder would have deleted the one and emptied the other."""
    out = tmp_path / "out"
    running = FolderLock(out, "batch", {}, remove_note=True)
    try:
        (out / ".000001.png.compositor-runn1ng0.partial").write_bytes(b"\x89PNG being written")
        (out / "report.jsonl").write_text('{"id": "000001", "status": "done"}\n')
        second = batch(str(write_jsonl(tmp_path / "in.jsonl", [body(2)])), "-o", str(out), "--workers", "1")
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and str(out) in lines[0] and f"the batch with pid {os.getpid()}" in lines[0], lines
        assert (out / ".000001.png.compositor-runn1ng0.partial").read_bytes() == b"\x89PNG being written"
        assert (out / "report.jsonl").read_text() == '{"id": "000001", "status": "done"}\n'
        assert not (out / "000002.png").exists()
    finally:
        running.release()
    assert not (out / ".compositor-batch.lock").exists()


def test_a_folder_that_cannot_be_locked_is_written_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Some network and FUSE file systems have no flock: the batch runs, saying what it cannot promise."""

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("compositor.folderlock.fcntl.flock", no_locks)
    out = tmp_path / "out"
    assert main(["batch", str(write_jsonl(tmp_path / "in.jsonl", [body(1)])), "-o", str(out), "--workers", "1"]) == 0
    said = capsys.readouterr().err
    assert f"cannot lock {out}" in said and "No locks available" in said
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "report.jsonl"]


def test_a_batch_leaves_no_lock_behind(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for _ in range(2):  # the second run is not refused by the first
        done = batch(str(write_jsonl(tmp_path / "in.jsonl", [body(1)])), "-o", str(out), "--workers", "1")
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "report.jsonl"]


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
        "warnings": [],
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


def sigint_as_in_a_terminal() -> None:
    """In a child, before it runs: SIGINT handled as it is in a terminal's foreground job. Ignored signals
    stay ignored across exec, and a shell script's background job (`pytest ... &`) ignores SIGINT: a
    batch started from such a pytest would ignore its Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process for the test, as in a terminal's foreground job,
    whatever this pytest inherited (a script's background job starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("stop", "exit_code", "said"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_a_stop_mid_run_is_clean_and_resume_carries_on(
    tmp_path: Path, stop: signal.Signals, exit_code: int, said: str
) -> None:
    """Ctrl-C, and SIGTERM (what a container stop, systemd or `timeout` sends: it used to end the batch at once,
    with no last line, and could land between a result and its report line)."""
    # Enough items that the batch cannot finish between its first result and the signal on a loaded machine.
    source = write_jsonl(tmp_path / "in.jsonl", [body(i, side=1024) for i in range(200)])
    out = tmp_path / "out"
    process = subprocess.Popen(
        [str(BIN / "compositor"), "batch", str(source), "-o", str(out), "--workers", "2"],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_in_a_terminal,
    )
    wait_until(lambda: any(out.glob("*.png")) or process.poll() is not None, "a first result written")
    assert process.poll() is None, "the batch ended before it could be stopped"
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(f"compositor: {said}: ") and "--resume carries on" in lines[-1], stderr
    assert "Traceback" not in stderr
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # nothing half-written, no lock note
    written = {line["id"] for line in report(out)}
    assert {p.stem for p in out.glob("*.png")} == written and 0 < len(written) < 200
    for path in out.glob("*.png"):
        Image.open(path).load()  # every file that is there is whole
    resumed = batch(str(source), "-o", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert len(list(out.glob("*.png"))) == 200


def test_a_stop_asked_for_again_while_the_batch_ends_still_gets_the_cleanup_and_the_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second SIGTERM (or Ctrl-C) landing while the workers are being stopped used to skip the removal of
    their partial files and the summary line."""
    from compositor.executors import LocalExecutor

    real_shutdown = LocalExecutor.shutdown

    def shutdown_meets_a_sigterm(self: LocalExecutor) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real_shutdown(self)

    monkeypatch.setattr(LocalExecutor, "shutdown", shutdown_meets_a_sigterm)
    out = tmp_path / "out"
    (out / ".000009.png.compositor-und3rw4y.partial").parent.mkdir()
    (out / ".000009.png.compositor-und3rw4y.partial").write_bytes(b"\x89PNG cut")
    code = main(["batch", str(write_jsonl(tmp_path / "in.jsonl", [body(1)])), "-o", str(out), "--workers", "1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 143 and last.startswith("compositor: terminated: 1 done, 0 failed"), last
    assert sorted(p.name for p in out.iterdir()) == ["000001.png", "report.jsonl"]


def vm_hwm_kib(pid: int) -> int | None:
    """The process's VmHWM in KiB; None once it has exited (a zombie's status has no memory lines)."""
    found = re.search(r"^VmHWM:\s*(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(found[1]) if found else None


def peak_rss_kib(process: subprocess.Popen[Any]) -> int:
    """The child's peak RSS, read until it ends: its own high-water mark since exec (ru_maxrss would carry
    the high-water mark of this large test process, from which it was forked). Read only while it is
    unreaped, so the pid is still its own."""
    peak_kib = 0
    while process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak_kib = max(peak_kib, vm_hwm_kib(process.pid) or 0)
        time.sleep(0.05)
    return peak_kib


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_the_peak_of_a_child_that_exited_unreaped_is_its_last_reading() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while process_state(child.pid) != "Z":  # exited, not yet reaped: the window issue 19 fell into
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert vm_hwm_kib(child.pid) is None
        assert peak_rss_kib(child) == 0 and child.returncode == 0
    finally:
        child.wait(10)


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
    peak_kib = peak_rss_kib(process)
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


class InlineExecutor:
    """Runs each task here, at once: what a test patches in this process reaches the "worker" too. Its
    `local_disk` says whether it stands for the local pool (workers write a local folder) or for Dask."""

    def __init__(self, local_disk: bool) -> None:
        self.local_disk = local_disk
        self.capacity = 1

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        return future

    def wait_until_available(self, timeout: float) -> bool:
        return True

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize(
    ("local_disk", "writer"), [(True, "write_beside"), (False, "write_atomically")], ids=["worker-writes", "client"]
)
def test_a_full_output_disk_stops_with_one_line_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], local_disk: bool, writer: str
) -> None:
    import compositor.batch
    import compositor.executors

    written: list[Path] = []
    refused: list[Path] = []
    real_write = getattr(compositor.batch, writer)

    def write_until_full(target: Path, data: bytes, *args: Any) -> Any:
        if len(written) == 2:
            refused.append(target)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk raises it
        written.append(target)
        return real_write(target, data, *args)

    monkeypatch.setattr(compositor.batch, writer, write_until_full)
    monkeypatch.setattr(compositor.executors, "LocalExecutor", lambda *args, **kwargs: InlineExecutor(local_disk))
    source = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(6)])
    out = tmp_path / "out"
    assert main(["batch", str(source), "-o", str(out), "--workers", "1"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("compositor:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "--resume" in errors[0], errors
    assert any(f"cannot write {target}: No space left on device" in errors[0] for target in refused), errors
    assert {line["id"] for line in report(out) if line["status"] == "done"} == {p.stem for p in written}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in written)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_batch_onto_a_full_tmpfs_is_exit_2_with_one_line(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(i, side=512) for i in range(20)])
    with small_tmpfs(tmp_path / "disk", "1m") as out:
        done = batch(str(source), "-o", str(out), "--workers", "1")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("compositor:")]
        assert len(errors) == 1 and f"cannot write {out}" in errors[0] and "No space left on device" in errors[0]
        whole = [line for line in report(out) if line["status"] == "done"]
        assert whole and len(whole) < 20
        for line in whole:
            Image.open(line["output"]).load()  # what was written stays, whole


def test_resume_after_a_report_cut_mid_line_starts_on_a_fresh_line(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(i) for i in range(3)])
    out = tmp_path / "out"
    assert batch(str(source), "-o", str(out)).returncode == 0
    first = report(out)
    cut = first[-1]["id"]
    text = (out / "report.jsonl").read_text()
    (out / "report.jsonl").write_text(text[:-25])  # the last line cut, as a kill or a full disk leaves it
    (out / f"{cut}.png").unlink()
    done = batch(str(source), "-o", str(out), "--resume")
    assert done.returncode == 0, done.stderr
    lines = report(out)  # every line is whole JSON: the cut one is gone, the new ones start a line each
    assert lines[:2] == first[:2]
    assert sorted((line["id"], line["status"]) for line in lines[2:]) == sorted(
        (item, "done" if item == cut else "skipped") for item in ("000001", "000002", "000003")
    )


def test_the_batch_line_cap_is_the_single_body_cap() -> None:
    from compositor import catalogue
    from compositor.commands import common

    assert catalogue.MAX_ITEM_BYTES == common.MAX_BODY_BYTES


def test_a_line_over_the_cap_fails_alone_naming_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import compositor.catalogue

    monkeypatch.setattr(compositor.catalogue, "MAX_ITEM_BYTES", 4096)
    padded = body(2, template_url="x" * 5000)  # valid JSON, 5 KB: over the (lowered) cap
    source = write_jsonl(tmp_path / "in.jsonl", [body(1), padded, "", body(3)])
    out = tmp_path / "out"
    assert main(["batch", str(source), "-o", str(out), "--workers", "1"]) == 1
    by_id = {line["id"]: line for line in report(out)}
    assert by_id["000002"]["status"] == "failed" and by_id["000002"]["code"] == 1003
    assert by_id["000002"]["errors"] == [{"field": "body", "message": "is larger than 4096 bytes"}]
    assert by_id["000001"]["status"] == by_id["000003"]["status"] == "done"


def test_a_line_over_the_cap_is_read_without_holding_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    import compositor.catalogue

    monkeypatch.setattr(compositor.catalogue, "MAX_ITEM_BYTES", 1 << 20)
    source = tmp_path / "in.jsonl"
    with source.open("w") as sink:
        sink.write(json.dumps(body(1)) + "\n")
        sink.write(json.dumps(body(2, template_url="x" * (24 << 20))) + "\n")  # 24 MB, valid JSON
        sink.write(json.dumps(body(3)) + "\n")
    tracemalloc.start()
    try:
        total = compositor.catalogue.count_items(source)
        items = [(item.id, item.problem) for item in compositor.catalogue.read_items(source)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 3
    assert items == [
        ("000001", None),
        ("000002", {"field": "body", "message": f"is larger than {1 << 20} bytes"}),
        ("000003", None),
    ]
    assert peak < 8 << 20, f"reading held {peak / 2**20:.0f} MiB"  # bounded chunks, never the 24 MB line


def test_an_answer_after_a_drop_restarts_the_wait_for_the_cluster(tmp_path: Path) -> None:
    """Two answers of one round, settled in either order: an item dropped by a cluster that went
    away, then another's result (sent before it went). The dropped one waits, then runs again."""
    from concurrent.futures import Future

    from compositor.batch import BatchRun, Item, ItemOutcome, _Pending
    from compositor.executors import ExecutorUnavailable

    class Cluster:  # back at once
        capacity = 1
        local_disk = False

        def submit(self, fn: Any, *args: Any) -> Future[Any]:
            raise AssertionError("not submitted here")

        def wait_until_available(self, timeout: float) -> bool:
            return True

        def shutdown(self) -> None:
            pass

    run = BatchRun(tmp_path, Cluster())
    run._report = io.StringIO()
    dropped: Future[ItemOutcome] = Future()
    dropped.set_exception(ExecutorUnavailable("the Dask cluster dropped the task (gone)"))
    answered: Future[ItemOutcome] = Future()
    answered.set_result(ItemOutcome(None, 1108, [{"field": "origin_img", "message": "unreadable"}], 0.1))
    run._settle(dropped, _Pending(Item("a", {}, str(tmp_path))), {})
    run._settle(answered, _Pending(Item("b", {}, str(tmp_path))), {})
    run._wait_for_executor()  # the cluster is back: no stop
    assert [pending.item.id for pending in run._dropped] == ["a"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound here and not listening,
    so no other process (a parallel suite's scheduler, say) can start listening on it meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield int(held.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


def test_an_unreachable_scheduler_is_exit_2_within_seconds(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [body(1)])
    started = time.monotonic()
    with refusing_port() as port:
        done = batch(str(source), "-o", str(tmp_path / "out"), "--scheduler", f"tcp://127.0.0.1:{port}")
    # It gives up after its 5 s connect timeout (about 10 s with the start), not after the 60 s a dropped
    # cluster is waited for (RECONNECT_PATIENCE_S): a bound that only that wait (or a hang) breaks.
    elapsed = time.monotonic() - started
    assert done.returncode == 2 and elapsed < 55, f"{elapsed:.0f} s"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0]


# --- Dask ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    with loopback_cluster() as cluster:
        yield cluster


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


def start_scheduler(port: int) -> subprocess.Popen[bytes]:
    """`dask scheduler` on loopback, as a user starts it (its own process group, for a kill -9)."""
    return subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_workers(address: str, workers: int) -> list[subprocess.Popen[bytes]]:
    """`dask worker` processes (one thread, no nanny), once the scheduler has them all."""
    started = [
        subprocess.Popen(
            [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(workers)
    ]
    from distributed import Client

    try:
        with Client(address, timeout=120) as client:  # the scheduler may still be starting
            client.wait_for_workers(workers, timeout=120)
    except BaseException:
        kill_all(started)
        raise
    return started


def kill_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(60)


@contextlib.contextmanager
def cli_cluster(workers: int) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """`dask scheduler` and `dask worker` processes, started as a user would."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = [start_scheduler(port)]
    try:
        workers_started = start_workers(address, workers)
        started += workers_started
        yield address, workers_started
    finally:
        kill_all(started)


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
        wait_until(lambda: len(list(out.glob("*.png"))) >= 5 or run.poll() is not None, "five results written")
        assert run.poll() is None, "the batch ended before a worker could be killed"
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
        wait_until(lambda: "waits" in server.log.read_text(), "the mirror's line saying the job waits")
        log = server.log.read_text()
        assert "waits" in log and "Dask" in log
        polled = call(server, "GET", "/api/open/v3/content/image/infobymodelid", params={"image_model_id": job["_id"]})
        assert polled["data"]["image_status"] in (1, 2)  # waiting, not failed
    finally:
        server.stop()


def test_a_serve_with_an_unreachable_scheduler_stops_with_one_line(tmp_path: Path) -> None:
    from tests.test_mirror import run_serve_on_a_free_port

    with refusing_port() as scheduler_port:
        argv = [str(BIN / "compositor"), "serve", "--data-dir", str(tmp_path)]
        done = run_serve_on_a_free_port([*argv, "--scheduler", f"tcp://127.0.0.1:{scheduler_port}"])
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


def test_progress_before_any_item_finished_says_the_time_left_is_not_known() -> None:
    from compositor.batch import Progress

    line = Progress(3, stream=io.StringIO()).line()
    assert "nan" not in line and "time left not known yet" in line, line


def test_a_line_with_text_that_is_not_unicode_fails_alone_naming_its_field(tmp_path: Path) -> None:
    from compositor import text
    from compositor.catalogue import read_items

    source = tmp_path / "bodies.jsonl"
    good = json.dumps({"canvas_size": "8x8"})
    hostile = json.dumps({"canvas_size": "8x8", "webhookUrl": "http://x/\udc80"})
    source.write_bytes(b"\n".join([good.encode(), hostile.encode(), b'{"canvas_size": "caf\xe9"}', good.encode()]))
    items = list(read_items(source))
    assert [item.problem for item in items] == [
        None,
        {"field": "webhookUrl", "message": text.MESSAGE},
        {"field": "canvas_size", "message": text.MESSAGE},
        None,
    ]


@pytest.mark.parametrize("local_disk", [True, False], ids=["worker-wrote", "client-writes"])
def test_ctrl_c_between_a_result_and_its_report_line_waits_for_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sigint_raises: None, local_disk: bool
) -> None:
    """The race behind a flaky run of the Ctrl-C test: SIGINT right after a result was put in place (renamed
    from the worker's partial file, or written by the client) and before its report line. It now arrives once
    both are done, so every file in the folder is in the report."""
    import os
    from concurrent.futures import Future

    from compositor import batch as batch_module
    from compositor.batch import BatchRun, Item, ItemOutcome, _Pending

    def then_ctrl_c(real: Callable[..., None]) -> Callable[..., None]:
        def step(*args: Any) -> None:
            real(*args)
            # The kernel may hand the signal to the bystander thread, whose C handler then runs when that thread
            # is next scheduled, on a loaded machine after this step (and the block holding the signal) has
            # ended: it is waited for here (the wakeup fd is written by that C handler), as a real Ctrl-C would
            # be by then.
            read_end, write_end = os.pipe()
            os.set_blocking(write_end, False)
            previous = signal.set_wakeup_fd(write_end)
            try:
                os.kill(os.getpid(), signal.SIGINT)  # as a terminal's Ctrl-C lands: between two steps
                ready, _, _ = select.select([read_end], [], [], 60)
                assert ready, "waited 60 s for the SIGINT to reach a thread"
            finally:
                signal.set_wakeup_fd(previous)
                os.close(read_end)
                os.close(write_end)

        return step

    if local_disk:
        monkeypatch.setattr(BatchRun, "_rename", then_ctrl_c(BatchRun._rename))
        (tmp_path / ".a.png.x.partial").write_bytes(b"\x89PNG whole")
        outcome = ItemOutcome(None, 1000, [], 0.1, [], 11, "0" * 64, partial=".a.png.x.partial")
    else:
        monkeypatch.setattr(batch_module, "write_atomically", then_ctrl_c(batch_module.write_atomically))
        outcome = ItemOutcome(b"\x89PNG whole", 1000, [], 0.1)
    # Other threads, as a real batch has (its executor's), may be the ones the kernel hands the signal to.
    busy = threading.Event()
    bystander = threading.Thread(target=busy.wait, daemon=True)
    bystander.start()
    run = BatchRun(tmp_path, executor=InlineExecutor(local_disk))
    run._report = io.StringIO()  # type: ignore[assignment]
    answered: Future[ItemOutcome] = Future()
    answered.set_result(outcome)
    with pytest.raises(KeyboardInterrupt):
        run._settle(answered, _Pending(Item("a", {}, str(tmp_path))), {})
    assert (tmp_path / "a.png").read_bytes() == b"\x89PNG whole"
    busy.set()
    assert [json.loads(line)["id"] for line in run._report.getvalue().splitlines()] == ["a"]
