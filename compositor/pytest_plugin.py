"""compositor's pytest plugin, registered through the package's entry points
(`pytest11`), so installing the package is enough. Fixtures:

- `bg_mirror`: a real mirror (`compositor serve`) on a free loopback port,
  with its own data directory, started once per session and reset before
  each test. `.base_url`, `.api_key`, `.client_id`, `.client_secret`, and the
  control methods of `compositor.client.MirrorControl`.
- `mock_background_change`: the in-process mock (`compositor.testing`),
  fresh for each test.

Nothing is imported from compositor until a fixture is used, so suites that
use neither pay nothing.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _end_with_parent() -> None:
    """In the child, before it runs: the kernel sends it SIGTERM when pytest
    ends, however pytest ends (a CI job's SIGTERM or SIGKILL included), so no
    server outlives the suite. Linux only; elsewhere the fixture's own
    teardown stops it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class MirrorProcess:
    """A `compositor serve` child process and what a test needs to call it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_id = "bg-mirror"
        self.client_secret = secrets.token_hex(16)  # 32 characters: an AES-256 key, as upstream's secrets are
        self.api_key = self.client_secret  # upstream's x-api-key is the client secret
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = (data_dir / "server.log").open("wb")
        # The client in the environment, not the command line, where every process could read its secret.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMPOSITOR_CLIENTS": f"{self.client_id}:{self.client_secret}"}
        env.pop("COMPOSITOR_ADMIN_TOKEN", None)  # its controls are open: it listens on loopback only
        command = [sys.executable, "-m", "compositor.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(data_dir / "data"), "--workers", "1", "--log-level", "warning"]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=_end_with_parent
        )

    def wait_until_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bg_mirror: the server exited ({self.process.returncode}): {self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/_mirror/jobs", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"bg_mirror: the server did not answer within {START_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def log_tail(self) -> str:
        self._log.flush()
        return (self.data_dir / "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def _bg_mirror_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MirrorProcess]:
    # Under pytest's own temporary folders, which pytest prunes, so even a killed run leaves nothing for long.
    server = MirrorProcess(tmp_path_factory.mktemp("bg-mirror"))
    try:
        server.wait_until_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def bg_mirror(_bg_mirror_process: MirrorProcess) -> Iterator[Any]:
    """A real mirror on loopback, reset before this test."""
    from compositor.client import MirrorControl

    class BgMirror(MirrorControl):
        base_url: str
        api_key = _bg_mirror_process.api_key
        client_id = _bg_mirror_process.client_id
        client_secret = _bg_mirror_process.client_secret
        data_dir = _bg_mirror_process.data_dir / "data"
        server_pid = _bg_mirror_process.process.pid

    with BgMirror(_bg_mirror_process.base_url) as mirror:
        mirror.reset()
        yield mirror


@pytest.fixture
def mock_background_change() -> Iterator[Any]:
    """The in-process mock of upstream (`compositor.testing`), for this test."""
    from compositor.testing import MockBackgroundChange

    with MockBackgroundChange() as mock:
        yield mock
