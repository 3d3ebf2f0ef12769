"""compositor's pytest plugin, registered through the package's entry points
(`pytest11`), so installing the package is enough. Fixtures:

- `bg_mirror`: a real mirror (`compositor serve`) on a free loopback port,
  with its own data directory, started once per session and reset before
  each test. `.base_url`, `.api_key`, `.client_id`, `.client_secret`, the
  control methods of `compositor.client.MirrorControl`, and `add_source(url,
  path_or_bytes)` / `add_source_map(file)` as the mock has them, for https://
  URLs, for this test only. A suite's own source map (`--compositor-source-map
  FILE`, or `compositor_source_map = FILE` in its ini file) is read when the
  server starts and holds for every test.
- `mock_background_change`: the in-process mock (`compositor.testing`),
  fresh for each test.

Nothing is imported from compositor until a fixture is used, so suites that
use neither pay nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

START_TIMEOUT_S = 120.0  # a loaded 2-core CI machine starts a server in seconds, not minutes
PORT_RETRIES = 5  # times the server is started on another port when its free one was taken first
# `add_source`'s way into a running server (which has no control call for sources): the server starts with a
# source map whose "https://" prefix maps every https URL to a folder of the fixture's, where `add_source` puts
# files and which is emptied before each test. So an https URL is never fetched: it is what the test added,
# or a missing file (the job fails, as the mock's would for a URL off this machine).
CATCH_ALL = "https://"


def pytest_addoption(parser: pytest.Parser) -> None:
    help_text = "a source map (JSON: URL or URL prefix to local file or folder) for bg_mirror's server"
    parser.getgroup("compositor").addoption(
        "--compositor-source-map", dest="compositor_source_map", default=None, metavar="FILE", help=help_text
    )
    parser.addini("compositor_source_map", help_text + ", relative to the ini file", default="")


def _suite_source_map(config: pytest.Config) -> Path | None:
    given = config.getoption("compositor_source_map")
    if given:
        return Path(given).resolve()  # relative to where pytest was started, as paths on its command line
    named = str(config.getini("compositor_source_map") or "")
    if not named:
        return None
    base = Path(config.inipath).parent if config.inipath is not None else config.rootpath
    return (base / named).resolve()


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

    def __init__(self, data_dir: Path, source_map: Path | None = None) -> None:
        self.data_dir = data_dir
        self.sources_dir = data_dir / "sources"  # what add_source maps: emptied before each test
        self.sources_dir.mkdir()
        self.client_id = "bg-mirror"
        self.client_secret = secrets.token_hex(16)  # 32 characters: an AES-256 key, as upstream's secrets are
        self.api_key = self.client_secret  # upstream's x-api-key is the client secret
        self._source_map = self._write_source_map(source_map)
        self._log = (data_dir / "server.log").open("wb")
        self._start()

    def _start(self) -> None:
        """The server on a free port. The port is free when it is chosen; another process may take it before the
        server binds it, and then the server exits saying so and `wait_until_ready` starts it on another."""
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The client in the environment, not the command line, where every process could read its secret.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COMPOSITOR_CLIENTS": f"{self.client_id}:{self.client_secret}"}
        env.pop("COMPOSITOR_ADMIN_TOKEN", None)  # its controls are open: it listens on loopback only
        command = [sys.executable, "-m", "compositor.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir / "data"), "--workers", "1", "--log-level", "warning"]
        command += ["--source-map", str(self._source_map)]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=_end_with_parent
        )

    def _write_source_map(self, suite_map: Path | None) -> Path:
        """The server's map: the suite's entries (checked here, their paths made absolute), and the catch-all."""
        from compositor.sourcemap import load_source_map

        entries: dict[str, str] = {CATCH_ALL: str(self.sources_dir)}
        if suite_map is not None:
            loaded = load_source_map(suite_map)
            entries.update({url: str(path) for url, path in (*loaded.exact, *loaded.prefixes)})
        path = self.data_dir / "source-map.json"
        path.write_text(json.dumps(entries, indent=1))
        return path

    def clear_sources(self) -> None:
        shutil.rmtree(self.sources_dir, ignore_errors=True)
        self.sources_dir.mkdir()

    def add_source(self, url: str, source: str | Path | bytes) -> None:
        if not url.startswith(CATCH_ALL):
            raise ValueError(f"url: bg_mirror maps https:// URLs (others go in the suite's source map), not {url!r}")
        target = self._target(url)
        if isinstance(source, bytes):
            if url.endswith("/"):
                raise ValueError("url: a prefix (ending in /) maps to a folder, not to bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source)
            return
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"add_source: no file or folder {source}")
        if url.endswith("/"):
            if not path.is_dir():
                raise NotADirectoryError(f"add_source: a prefix (ending in /) maps to a folder, not {source}")
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)

    def _target(self, url: str) -> Path:
        """Where the server looks for `url`: under the catch-all's folder, found by the server's own rule."""
        from compositor.errors import SourceError
        from compositor.sourcemap import SourceMap

        root = self.sources_dir.resolve()
        try:
            target = SourceMap.from_entries({CATCH_ALL: root}).resolve(url, "url")
        except SourceError:  # a path outside the folder
            target = None
        if target is None or target == root:
            raise ValueError(f"url: {url!r} names no file under a host")
        return target

    def wait_until_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_TIMEOUT_S
        restarts = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if f"cannot listen on 127.0.0.1:{self.port}" in self.log_tail() and restarts < PORT_RETRIES:
                    restarts += 1
                    self._start()
                    continue
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
def _bg_mirror_process(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MirrorProcess]:
    # Under pytest's own temporary folders, which pytest prunes, so even a killed run leaves nothing for long.
    server = MirrorProcess(tmp_path_factory.mktemp("bg-mirror"), _suite_source_map(request.config))
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

        def add_source(self, url: str, source: str | Path | bytes) -> None:
            """Let a body's https `url` (or every URL under an https prefix ending in "/") read from a local
            file or folder (copied), or from these bytes, for this test. A query or fragment is ignored."""
            _bg_mirror_process.add_source(url, source)

        def add_source_map(self, path: str | Path) -> None:
            """Every entry of a source map file (https:// URLs only), as `add_source` would add it."""
            from compositor.sourcemap import load_source_map

            loaded = load_source_map(Path(path))
            for url, local in (*loaded.exact, *loaded.prefixes):
                self.add_source(url, local)

    _bg_mirror_process.clear_sources()
    with BgMirror(_bg_mirror_process.base_url) as mirror:
        mirror.reset()
        yield mirror


@pytest.fixture
def mock_background_change() -> Iterator[Any]:
    """The in-process mock of upstream (`compositor.testing`), for this test."""
    from compositor.testing import MockBackgroundChange

    with MockBackgroundChange() as mock:
        yield mock
