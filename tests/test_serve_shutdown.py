"""Stopping `compositor serve` as a terminal does (Ctrl-C: SIGINT to the whole
process group) or as a service manager does (SIGTERM): one line, exit 0, and
no traceback from the server or any of its worker processes."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"
DEADLINE_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen; the server said:\n{log.read_text()[-3000:]}")


def answers(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(base + "/openapi.json", timeout=2).status_code == 200
    return False


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def png_data_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (200, 40, 40, 255)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`compositor serve` as `make serve` starts it (development mode, no
    config), in its own process group, its output in a file."""
    port = free_port()
    data_dir = tmp_path / "data"
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSITOR_")}
    argv = [sys.executable, "-m", "compositor.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*argv, "--workers", "2"], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or answers(base), "the server's start", log)
        assert process.poll() is None, log.read_text()
        yield process, base, log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def run_one_job(base: str, data_dir: Path, log: Path) -> None:
    """Submits one job and waits for it: the render workers have started and worked."""
    key = (data_dir / "development-client.header").read_text().split(":", 1)[1].strip()
    headers = {"x-api-key": key}
    body = {
        "canvas_size": "64x48",
        "color_code": "#203040",
        "origin_img": png_data_uri(),
        "modify_origin_img_size": "16x16",
        "overlay_origin_x": 4,
        "overlay_origin_y": 8,
    }
    answer = httpx.post(base + SUBMIT, json=body, headers=headers, timeout=30).json()
    assert answer["code"] == 1000, answer
    job_id = answer["data"]["_id"]

    def done() -> bool:
        info = httpx.get(base + INFO, params={"image_model_id": job_id}, headers=headers, timeout=30).json()
        return bool(info["data"]["image_status"] == 3)

    wait_until(done, "the job's completion", log)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_group_stops_the_server_with_one_line_and_exit_0(
    served: tuple[subprocess.Popen[bytes], str, Path], tmp_path: Path, signum: int
) -> None:
    process, base, log = served
    run_one_job(base, tmp_path / "data", log)
    # A last request, whose access line marks the end of what came before the signal.
    assert httpx.get(base + "/docs", timeout=30).status_code == 200
    wait_until(lambda: b"GET /docs " in log.read_bytes(), "the last request's log line", log)
    before = len(log.read_bytes())

    os.killpg(process.pid, signum)  # as a terminal's Ctrl-C does: every process of the group gets it
    process.wait(timeout=DEADLINE_S)
    wait_until(lambda: group_is_gone(process.pid), "the end of every worker", log)  # all they print is in

    output = log.read_text(errors="replace")
    after = log.read_bytes()[before:].decode(errors="replace")
    assert process.returncode == 0, output
    for word in ("Traceback", "KeyboardInterrupt", "CancelledError"):
        assert word not in output, output
    assert len(after.splitlines()) == 1, after
