"""Faults made for real against a running mirror: render workers killed with
-9, the server killed with -9, a small tmpfs filled up, a damaged database
file, a second server on the same data dir, webhook receivers that are down
or drip their answers. After each, the mirror answers with the envelope and
goes on working without a restart."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import IMAGES, serving
from tests.test_mirror import (
    CONFIG,
    INFO,
    SECRET,
    SUBMIT,
    Server,
    body,
    call,
    decrypt,
    run_serve_on_a_free_port,
    start_development_server,
    start_server,
    wait_for,
    wait_until,
)

# --- helpers -------------------------------------------------------------------


class _SlowSource(http.server.BaseHTTPRequestHandler):
    """Serves the fixture foreground once released (`release()`; at most `delay` seconds after the request).
    `arrivals` counts the requests, so that a test can wait for a render to be fetching."""

    delay: ClassVar[float] = 0.0
    arrivals: ClassVar[int] = 0
    released: ClassVar[threading.Event] = threading.Event()

    @classmethod
    def release(cls) -> None:
        cls.delay = 0.0
        cls.released.set()

    def do_GET(self) -> None:
        type(self).arrivals += 1
        if type(self).delay:
            type(self).released.wait(type(self).delay)
        data = (IMAGES / "foreground.png").read_bytes()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_source() -> Iterator[str]:
    """A source that answers only once released: a render fetching it stays busy until the test says."""
    _SlowSource.delay, _SlowSource.arrivals = 300.0, 0
    _SlowSource.released = threading.Event()
    with serving(_SlowSource) as base:
        try:
            yield f"{base}/slow.png"
        finally:
            _SlowSource.release()


def fetching(count: int) -> None:
    """Waits for the slow source's `count`th request: a render is then fetching it (and stays so)."""
    wait_until(lambda: _SlowSource.arrivals >= count, f"request {count} to the slow source")


def render_workers(server: Server, kind: str = "render") -> list[int]:
    """The server's worker processes of one kind, by the name they give themselves."""
    children = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout
    found = []
    for child in children.split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # it ended since pgrep saw it
            if Path(f"/proc/{child}/comm").read_text().strip() == f"{kind}-worker":
                found.append(int(child))
    return found


def kill_workers(server: Server, expected: int = 2, timeout: float = 120.0) -> int:
    """Kill the server's render workers, once all `expected` have started: they are spawned interpreters,
    named only after their imports, which on a loaded machine can outlast the job's move to processing."""
    deadline = time.monotonic() + timeout
    pids = [pid for pid in render_workers(server) if alive(pid)]  # not one killed before, still unreaped
    while len(pids) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [pid for pid in render_workers(server) if alive(pid)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # reaped (before the open, or between the open and the read)
        return False
    return state != "Z"


def submit(server: Server, **overrides: Any) -> str:
    answer = call(server, "POST", SUBMIT, json=body(**overrides))
    assert answer["code"] == 1000, answer
    return str(answer["data"]["_id"])


# --- worker deaths -------------------------------------------------------------------


# One render worker in these two: with two, the job's retry could reach the second worker between the two
# kills and be charged a second death.


def test_a_killed_worker_costs_one_retry_and_later_jobs_still_run(tmp_path: Path, slow_source: str) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--workers", "1")
    try:
        job = submit(server, origin_img=slow_source)
        fetching(1)  # its worker is fetching its slow source now, and stays so until released
        assert kill_workers(server, expected=1) == 1
        _SlowSource.release()
        done = wait_for(server, job)
        assert done["image_status"] == 3, done
        later = [submit(server) for _ in range(3)]
        assert all(wait_for(server, j)["image_status"] == 3 for j in later)
        assert "running it again" in server.log.read_text()
    finally:
        server.stop()


def test_a_job_whose_worker_dies_twice_fails_with_a_reason(tmp_path: Path, slow_source: str) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--workers", "1")
    try:
        job = submit(server, origin_img=slow_source)
        for attempt in (1, 2):
            fetching(attempt)  # this attempt's worker is fetching the slow source
            assert kill_workers(server, expected=1) == 1
        done = wait_for(server, job)
        assert done["image_status"] == 4
        reason = done["error_reasons"][0]
        assert "render process ended before it finished" in reason and "2 times" in reason
        assert "pid" not in reason.lower() and str(tmp_path) not in reason
        _SlowSource.release()
        assert wait_for(server, submit(server))["image_status"] == 3
    finally:
        server.stop()


def test_workers_end_when_the_server_is_killed_with_9(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG)
    try:
        workers: list[int] = []

        def all_started() -> bool:
            workers[:] = render_workers(server) + render_workers(server, "preview")
            return len(workers) >= 3

        wait_until(all_started, "the server's 2 render workers and its preview worker")
        os.kill(server.process.pid, signal.SIGKILL)  # the server alone: its workers are re-parented
        server.process.wait(timeout=60)
        wait_until(lambda: not any(alive(pid) for pid in workers), f"the orphaned workers {workers} to end")
    finally:
        server.kill_hard()  # whatever is left of its group


def test_a_second_server_on_the_same_data_dir_refuses_naming_the_first(tmp_path: Path) -> None:
    first = start_server(tmp_path / "data", CONFIG)
    try:
        second = run_serve_on_a_free_port(
            [*first.argv[:4], "--data-dir", str(tmp_path / "data"), "--config", str(first.data_dir / "mirror.toml")]
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.process.pid}" in lines[0] and "in use" in lines[0]
        assert "Traceback" not in second.stderr and second.stdout == ""
        assert wait_for(first, submit(first))["image_status"] == 3
    finally:
        first.stop()


# --- the store ------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def test_a_full_disk_answers_the_envelope_and_the_mirror_recovers_when_space_returns(
    tmpfs: Path, slow_source: str
) -> None:
    server = start_server(tmpfs / "data", CONFIG)
    try:
        assert wait_for(server, submit(server))["image_status"] == 3
        in_flight = submit(server, origin_img=slow_source)
        fetching(1)
        filler = fill(tmpfs)
        refused = httpx.post(server.base + SUBMIT, headers={"x-api-key": SECRET}, json=body(), timeout=30)
        assert refused.status_code == 503 and refused.headers["content-type"] == "application/json"
        answer = refused.json()
        assert answer["code"] == 1206 and "full" in answer["msg"] and str(tmpfs) not in answer["msg"]
        assert call(server, "GET", INFO, params={"image_model_id": in_flight})["code"] == 1000
        _SlowSource.release()  # the slow render finishes with nowhere to write its result
        refused_result = f"job {in_flight}: no space left to store the result"
        wait_until(lambda: refused_result in server.log.read_text(), "the log line of the result refused for space")
        assert call(server, "GET", INFO, params={"image_model_id": in_flight})["data"]["image_status"] in (1, 2)
        filler.unlink()
        assert wait_for(server, in_flight)["image_status"] == 3
        assert wait_for(server, submit(server))["image_status"] == 3
        assert server.process.poll() is None
    finally:
        server.stop()


def test_a_damaged_database_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, CONFIG)
    for _ in range(3):
        submit(server)
    server.stop()
    database = data / "jobs.sqlite3"
    raw = bytearray(database.read_bytes())
    raw[4096:8192] = os.urandom(4096)  # page 2 onwards: the tables' pages, not the header
    database.write_bytes(bytes(raw))
    started = subprocess.run(server.argv, capture_output=True, text=True, timeout=60)
    assert started.returncode == 2
    assert "Traceback" not in started.stderr
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "damaged" in lines[0], started.stderr


def test_a_page_damaged_while_running_gets_the_envelope_and_the_threads_survive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, CONFIG.replace("expiry_interval_s = 0.5", "expiry_interval_s = 0.2"))
    try:
        assert wait_for(server, submit(server))["image_status"] == 3
        outside = sqlite3.connect(data / "jobs.sqlite3")
        outside.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        index_page = outside.execute("SELECT rootpage FROM sqlite_master WHERE name = 'jobs_by_status'").fetchone()[0]
        page_size = outside.execute("PRAGMA page_size").fetchone()[0]
        with (data / "jobs.sqlite3").open("r+b") as file:
            file.seek((index_page - 1) * page_size)
            original = file.read(page_size)
            file.seek((index_page - 1) * page_size)
            file.write(os.urandom(page_size))
        answers = [
            httpx.post(server.base + SUBMIT, headers={"x-api-key": SECRET}, json=body(), timeout=30) for _ in range(3)
        ]
        assert all(a.headers["content-type"] == "application/json" for a in answers)
        assert any(a.status_code == 503 and a.json()["code"] == 1206 and "damaged" in a.json()["msg"] for a in answers)

        # The dispatcher and the expiry thread meet the damage too (each says so in the log).
        def met_by(thread: str) -> bool:
            failed = [line for line in server.log.read_text().splitlines() if "the job store failed (" in line]
            return any(("expiry: " in line) == (thread == "expiry") for line in failed)

        for thread in ("dispatcher", "expiry"):
            wait_until(lambda thread=thread: met_by(thread), f"the {thread}'s line on the damaged store")
        with (data / "jobs.sqlite3").open("r+b") as file:  # what a person would do: restore the page
            file.seek((index_page - 1) * page_size)
            file.write(original)
        outside.execute("CREATE TABLE repaired (at INTEGER)")  # a commit: every connection rereads its pages
        outside.close()
        assert wait_for(server, submit(server), timeout=60)["image_status"] == 3
        assert server.process.poll() is None
    finally:
        server.stop()


# --- webhooks -------------------------------------------------------------------------


@dataclass
class Hooks:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    up: bool = True
    arrived: int = 0  # requests read (answered or not)
    open: int = 0  # requests not yet answered (a held receiver's)
    release: threading.Event = field(default_factory=threading.Event)  # a held receiver answers (503) from then


def hook_server(drip_s: float = 0.0, hold: bool = False) -> tuple[http.server.ThreadingHTTPServer, Hooks]:
    """A webhook receiver: up (200) or down (503); with `drip_s`, an answer a byte at a time; with `hold`,
    no answer at all until `hooks.release` is set."""
    hooks = Hooks("")
    count = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with count:
                hooks.arrived += 1
            if hold:
                with count:
                    hooks.open += 1
                hooks.release.wait(300)
                with count:
                    hooks.open -= 1
                with contextlib.suppress(OSError):
                    self.send_response(503)
                    self.end_headers()
                return
            if not hooks.up:
                self.send_response(503)
                self.end_headers()
                return
            if drip_s:
                with contextlib.suppress(OSError):
                    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(drip_s)
                return
            hooks.received.append(payload)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hooks.url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, hooks


def statuses(hooks: Hooks, job: str) -> list[int]:
    messages = [decrypt(p["dataEncrypt"], "alpha", SECRET) for p in hooks.received]
    return [m["status"] for m in messages if m["_id"] == job]


def test_webhooks_owed_before_a_kill_9_are_delivered_after_the_restart(tmp_path: Path) -> None:
    httpd, hooks = hook_server()
    hooks.up = False
    server = start_server(tmp_path / "data", CONFIG)
    try:
        job = submit(server, webhookUrl=hooks.url)
        wait_for(server, job)
        server.kill_hard()
        hooks.up = True
        again = start_server(tmp_path / "data", CONFIG)
        try:
            wait_until(lambda: statuses(hooks, job) == [2, 3], "the owed webhooks (2, then 3) after the restart")
            assert statuses(hooks, job) == [2, 3]
        finally:
            again.stop()
    finally:
        server.stop()
        httpd.shutdown()


def test_a_receiver_that_never_answers_delays_only_its_own_webhooks(tmp_path: Path) -> None:
    """Ordered by events, not by the clock: the fast receiver gets both of its job's webhooks while the held
    receiver's lane (2 deliveries at once to one receiver) is full and still waiting on its answers (their
    timeout, 120 s, is far off)."""
    held_httpd, held = hook_server(hold=True)
    fast_httpd, fast = hook_server()
    config = CONFIG.replace("webhook_attempts = 6", "webhook_attempts = 2\nwebhook_timeout_s = 120")
    server = start_server(tmp_path / "data", config)
    try:
        held_url = f"http://127.0.0.1:{held_httpd.server_address[1]}/hook"
        for _ in range(6):
            submit(server, webhookUrl=held_url)
        wait_until(lambda: held.open >= 2, "two deliveries held open by the receiver that does not answer")
        job = submit(server, webhookUrl=fast.url)
        wait_until(lambda: statuses(fast, job) == [2, 3], "the fast receiver's two webhooks")
        assert held.open == held.arrived == 2  # the held ones have not ended, and no other was let in meanwhile
    finally:
        held.release.set()
        server.stop()
        held_httpd.shutdown()
        fast_httpd.shutdown()


def test_a_dripping_receiver_is_cut_off_at_the_webhook_timeout(tmp_path: Path) -> None:
    slow_httpd, _ = hook_server(drip_s=0.5)  # 20 s to answer, at a byte every 0.5 s
    config = CONFIG.replace("webhook_attempts = 6", "webhook_attempts = 2\nwebhook_timeout_s = 2")
    server = start_server(tmp_path / "data", config)
    try:
        slow_url = f"http://127.0.0.1:{slow_httpd.server_address[1]}/hook"
        submit(server, webhookUrl=slow_url)

        def errors() -> list[str]:
            with contextlib.closing(sqlite3.connect(tmp_path / "data" / "jobs.sqlite3", timeout=30)) as db:
                return [row[0] for row in db.execute("SELECT last_error FROM webhooks WHERE url = ?", (slow_url,))]

        wait_until(lambda: any(e and "within 2 s" in e for e in errors()), "a delivery cut off 'within 2 s'")
    finally:
        server.stop()
        slow_httpd.shutdown()


# --- memory -------------------------------------------------------------------------


def sixteen_bit_png(path: Path, side: int) -> str:
    Image.fromarray(np.zeros((side, side), np.uint16)).save(path)
    return path.as_uri()


def test_a_job_over_the_memory_budget_fails_naming_the_budget(tmp_path: Path) -> None:
    heavy = sixteen_bit_png(tmp_path / "heavy.png", 6000)  # 36 Mpx, a few KB on disk
    server = start_server(tmp_path / "data", CONFIG, "--memory-budget", "256", "--allow-file-root", str(tmp_path))
    try:
        job = submit(server, origin_img=heavy, template_url=heavy)
        done = wait_for(server, job)
        assert done["image_status"] == 4
        assert "memory budget of 256 MB" in done["error_reasons"][0]
        assert wait_for(server, submit(server))["image_status"] == 3
    finally:
        server.stop()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_uploads_decode_outside_the_server_process(tmp_path: Path) -> None:
    heavy = tmp_path / "heavy.png"
    sixteen_bit_png(heavy, 8000)
    data = heavy.read_bytes()
    server = start_server(tmp_path / "data", CONFIG)
    try:
        before = peak_rss_mb(server.process.pid)

        def upload(_: int) -> httpx.Response:
            return httpx.post(
                server.base + "/uploads", content=data, headers={"content-type": "image/png"}, timeout=120
            )

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(upload, range(6)))
        codes = sorted(a.json()["code"] for a in answers)
        assert all(a.status_code in (200,) for a in answers)
        assert codes.count(1000) >= 1 and set(codes) <= {1000, 1005}
        assert peak_rss_mb(server.process.pid) - before < 100  # a decode would be 128 MB at the least
    finally:
        server.stop()


# --- the page's endpoints -----------------------------------------------------------------


def page_post(server: Server, path: str, **headers: str) -> httpx.Response:
    payload = json.dumps({"body": body(canvas_size="64x64")})
    merged = {"content-type": "application/json", **headers}
    return httpx.post(server.base + path, content=payload, headers=merged, timeout=60)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("page"), CONFIG)
    yield running
    running.stop()


def test_the_page_itself_may_render(page_server: Server) -> None:
    answer = page_post(page_server, "/preview/render", origin=page_server.base)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"host": "evil.example:8080"},
        {"content-type": "text/plain"},
        {"sec-fetch-site": "cross-site"},
    ],
    ids=["foreign-origin", "null-origin", "rebound-host", "simple-content-type", "fetch-metadata"],
)
def test_the_page_refuses_what_another_site_could_send(page_server: Server, headers: dict[str, str]) -> None:
    for path in ("/preview/render", "/preview/validate"):
        answer = page_post(page_server, path, **headers)
        assert answer.status_code == 403 and answer.json()["code"] == 1101


def test_an_upload_needs_an_image_type(page_server: Server) -> None:
    png = (IMAGES / "foreground.png").read_bytes()
    answer = httpx.post(page_server.base + "/uploads", content=png, headers={"content-type": "text/plain"})
    assert answer.status_code == 403


def test_uploads_expire_with_the_results(tmp_path: Path) -> None:
    # 3 s: time enough, on a loaded machine, for the first fetch to come before the upload has expired.
    server = start_server(tmp_path / "data", CONFIG, "--result-ttl", "3")
    try:
        png = (IMAGES / "foreground.png").read_bytes()
        url = httpx.post(
            server.base + "/uploads", content=png, headers={"content-type": "image/png"}, timeout=30
        ).json()["data"]["url"]
        assert httpx.get(url).status_code == 200
        wait_until(lambda: httpx.get(url, timeout=30).status_code != 200, "the upload (time to live 3 s) to expire")
        assert httpx.get(url, timeout=30).status_code == 404
    finally:
        server.stop()


# --- every answer is the envelope ---------------------------------------------------------


def envelope_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.text
    answer = response.json()
    assert isinstance(answer["code"], int) and isinstance(answer["msg"], str)
    return dict(answer)


def test_unknown_paths_and_methods_get_the_envelope(page_server: Server) -> None:
    missing = httpx.get(page_server.base + "/api/open/v3/nope")
    assert missing.status_code == 404 and envelope_of(missing)["code"] == 1003
    wrong = httpx.delete(page_server.base + SUBMIT)
    assert wrong.status_code == 405 and envelope_of(wrong)["code"] == 1003


def test_a_body_over_the_cap_is_refused_before_it_is_read(page_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", int(page_server.base.rsplit(":", 1)[1]))) as conn:
        conn.sendall(
            f"POST {SUBMIT} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {SECRET}\r\n"
            "content-type: application/json\r\ncontent-length: 5000000000\r\n\r\n{".encode()
        )
        conn.settimeout(10)
        answer = b""
        while b"1048576" not in answer and (chunk := conn.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"1048576" in answer


def test_a_chunked_body_over_the_cap_is_refused(page_server: Server) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    answer = httpx.post(page_server.base + SUBMIT, headers={"x-api-key": SECRET}, content=chunks(), timeout=30)
    assert answer.status_code == 413 and "1048576" in envelope_of(answer)["msg"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"canvas_size": "64x64", "overlay_origin_x": ' + b"9" * 5000 + b"}",
        b"[" * 100000 + b"]" * 100000,
        b'{"a": "\xff\xfe"}',
    ],
    ids=["huge-integer", "deep-nesting", "invalid-utf8"],
)
def test_bodies_python_cannot_hold_are_1003(page_server: Server, raw: bytes) -> None:
    for path, key in ((SUBMIT, SECRET), ("/api/open/v3/getToken", None)):
        headers = {"content-type": "application/json", **({"x-api-key": key} if key else {})}
        answer = httpx.post(page_server.base + path, content=raw, headers=headers, timeout=30)
        assert answer.status_code == 200 and envelope_of(answer)["code"] == 1003


def test_nul_bytes_in_file_paths_are_404(page_server: Server) -> None:
    for path in ("/results/a%00b.png", "/uploads/a%00b.png"):
        answer = httpx.get(page_server.base + path)
        assert answer.status_code == 404 and envelope_of(answer)["code"] == 1003


def test_a_bracket_in_a_source_host_is_a_field_error(page_server: Server) -> None:
    answer = call(page_server, "POST", SUBMIT, json=body(origin_img="http://[oops/a.png"))
    assert answer["code"] == 1003 and answer["data"]["errors"][0]["field"] == "origin_img"


def test_a_malformed_upload_is_1003(page_server: Server) -> None:
    png = (IMAGES / "foreground.png").read_bytes()
    broken = png[:100] + bytes(200) + png[300:]
    answer = httpx.post(
        page_server.base + "/uploads", content=broken, headers={"content-type": "image/png"}, timeout=30
    )
    assert answer.status_code == 200 and envelope_of(answer)["code"] == 1003


def test_an_unexpected_exception_is_500_with_a_request_id() -> None:
    import asyncio

    from compositor.mirror.middleware import ErrorEnvelope

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ErrorEnvelope(broken)({"type": "http", "method": "GET", "path": "/x"}, None, send))  # type: ignore[arg-type]
    assert sent[0]["status"] == 500
    answer = json.loads(sent[1]["body"])
    assert answer["code"] == 1206 and answer["data"]["request_id"] in answer["msg"]


# --- secrets -----------------------------------------------------------------------------------


def test_the_banner_and_the_log_never_print_a_configured_secret(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG)
    try:
        call(server, "POST", SUBMIT, key="x" * 32, json=body())
        wait_for(server, submit(server, origin_img="http://127.0.0.1:9/gone.png"))
    finally:
        server.stop()
    log = server.log.read_text()
    assert "client alpha" in log
    for secret in (SECRET, "b" * 32, "q" * 16, "r" * 24):
        assert secret not in log


def test_the_development_key_is_shown_once_then_read_from_its_file(tmp_path: Path) -> None:

    outputs = []
    for _ in range(2):
        process, _ = start_development_server(tmp_path / "dev")
        os.killpg(process.pid, signal.SIGTERM)
        outputs.append(process.communicate(timeout=30)[0])
    key = json.loads((tmp_path / "dev" / "development-client.json").read_text())["clientSecret"]
    assert key in outputs[0] and key not in outputs[1]
    header = tmp_path / "dev" / "development-client.header"
    assert f"-H @{header}" in outputs[1] and header.read_text().strip() == f"x-api-key: {key}"
    assert header.stat().st_mode & 0o077 == 0


# --- what an attacker tried next (each of these broke the mirror once) --------------------------


def test_a_deeply_nested_body_is_refused_and_rendering_goes_on(page_server: Server) -> None:
    deep: Any = []
    for _ in range(900):
        deep = [deep]
    answer = call(page_server, "POST", SUBMIT, json=body(zz=deep))
    assert answer["code"] == 1003 and answer["data"]["errors"][0]["field"] == "body"
    preview = httpx.post(
        page_server.base + "/preview/render",
        content=json.dumps({"body": body(zz=deep)}),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert preview.json()["code"] == 1003
    assert wait_for(page_server, submit(page_server))["image_status"] == 3


@pytest.mark.parametrize("url", ["http://[abc", "http://127.0.0.1:abc/x", "http://127.0.0.1:99999/x"])
def test_a_webhook_url_that_does_not_parse_is_1003(page_server: Server, url: str) -> None:
    answer = call(page_server, "POST", SUBMIT, json=body(webhookUrl=url))
    assert answer["code"] == 1003 and answer["data"]["errors"][0]["field"] == "webhookUrl"


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc/x", "http://127.0.0.1:99999/x"])
def test_a_source_url_with_a_bad_port_is_a_field_error_everywhere(page_server: Server, url: str) -> None:
    answer = call(page_server, "POST", SUBMIT, json=body(origin_img=url))
    assert answer["code"] == 1003 and answer["data"]["errors"][0]["field"] == "origin_img"
    preview = page_post(page_server, "/preview/render")
    assert preview.status_code == 200


def test_a_long_static_name_is_404(page_server: Server) -> None:
    answer = httpx.get(page_server.base + "/static/" + "a" * 5000 + ".js")
    assert answer.status_code == 404 and envelope_of(answer)["code"] == 1003


def test_an_upload_on_a_full_disk_is_503_with_the_envelope(tmpfs: Path) -> None:
    server = start_server(tmpfs / "data", CONFIG)
    try:
        filler = fill(tmpfs)
        png = png_of(Image.effect_noise((64, 64), 40).convert("RGB"))
        answer = httpx.post(server.base + "/uploads", content=png, headers={"content-type": "image/png"}, timeout=30)
        assert answer.status_code == 503 and envelope_of(answer)["code"] == 1206
        filler.unlink()
        again = httpx.post(server.base + "/uploads", content=png, headers={"content-type": "image/png"}, timeout=30)
        assert envelope_of(again)["code"] == 1000
    finally:
        server.stop()


def png_of(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_waiting_uploads_are_refused_before_their_bodies_are_read(tmp_path: Path) -> None:
    heavy = tmp_path / "heavy.png"
    Image.effect_noise((3000, 3000), 80).convert("RGB").save(heavy, compress_level=0)  # 27 MB
    data = heavy.read_bytes()
    server = start_server(tmp_path / "data", CONFIG)
    try:
        before = peak_rss_mb(server.process.pid)
        from concurrent.futures import ThreadPoolExecutor

        def upload(_: int) -> int:
            answer = httpx.post(
                server.base + "/uploads", content=data, headers={"content-type": "image/png"}, timeout=120
            )
            return int(answer.json()["code"])

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(upload, range(12)))
        assert 1000 in codes and 1005 in codes
        # At most 4 bodies of 27 MB are held at once, not 12 (with what the server parses, under 200 MB).
        assert peak_rss_mb(server.process.pid) - before < 200
    finally:
        server.stop()


def test_the_lock_holds_when_its_file_is_deleted(tmp_path: Path) -> None:
    first = start_server(tmp_path / "data", CONFIG)
    try:
        (tmp_path / "data" / "mirror.lock").unlink()
        argv = [*first.argv[:4], "--data-dir", str(tmp_path / "data")]
        second = run_serve_on_a_free_port([*argv, "--config", str(first.data_dir / "mirror.toml")])
        assert second.returncode == 2 and "in use" in second.stderr
    finally:
        first.stop()


def test_a_removebg_job_over_the_budget_fails_before_it_runs(tmp_path: Path) -> None:
    Image.effect_noise((500, 500), 60).convert("RGB").resize((5000, 5000)).save(tmp_path / "big.png")
    server = start_server(
        tmp_path / "data", CONFIG, "--workers", "1", "--memory-budget", "400", "--allow-file-root", str(tmp_path)
    )
    try:
        job = submit(
            server, origin_img=(tmp_path / "big.png").as_uri(), removeBg=True, canvas_size="2000x2000",
            modify_origin_img_size="2000x2000", overlay_origin_x=0, overlay_origin_y=0,
        )  # fmt: skip
        done = wait_for(server, job, timeout=120)
        assert done["image_status"] == 4 and "memory budget of 400 MB" in done["error_reasons"][0]
    finally:
        server.stop()


@pytest.mark.parametrize("flags", [["--port", "99999"], ["--port", "-1"], ["--memory-budget", "nan"]])
def test_impossible_settings_are_one_line(tmp_path: Path, flags: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "serve", "--data-dir", str(tmp_path / "d"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_client_secret_of_the_wrong_type_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[client]]\nid = "a"\nsecret = 1234567890123456\n')
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "serve", "--data-dir", str(tmp_path / "d"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr and "[[client]]" in done.stderr
