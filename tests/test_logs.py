"""The mirror's log: a line per request and per job state change, as text or
JSON lines, never a secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.test_mirror import CONFIG, INFO, SECRET, SUBMIT, Server, body, call, start_server, wait_for, wait_until


def json_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def settle(server: Server, predicate: Any, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = json_lines(server)
        if predicate(lines):
            return lines
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout:.0f} s for the log lines; it says:\n" + server.log.read_text()[-3000:])


def test_json_lines_tell_each_request_and_each_job_state(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--log-format", "json")
    try:
        good = call(server, "POST", SUBMIT, json=body())["data"]["_id"]
        bad = call(server, "POST", SUBMIT, json=body(origin_img="http://127.0.0.1:9/gone.png"))["data"]["_id"]
        wait_for(server, good)
        wait_for(server, bad)
        call(server, "GET", INFO, params={"image_model_id": good})

        def done(lines: list[dict[str, Any]]) -> bool:
            return any(line.get("outcome") == "failed" for line in lines)

        lines = settle(server, done)
    finally:
        server.stop()
    jobs = [line for line in lines if line["logger"] == "compositor.jobs"]
    assert [j["outcome"] for j in jobs if j["job_id"] == good] == ["queued", "processing", "completed"]
    failed = next(j for j in jobs if j["job_id"] == bad and j["outcome"] == "failed")
    assert failed["client_id"] == "alpha" and "origin_img: could not be fetched" in failed["reason"]
    access = [line for line in lines if line["logger"] == "compositor.access"]
    submit = next(a for a in access if a["event"] == f"POST {SUBMIT}")
    assert submit["status"] == 200 and submit["code"] == 1000 and submit["client_id"] == "alpha" and submit["ms"] >= 0
    assert any(a["event"] == f"GET {INFO}" and a["code"] == 1000 for a in access)
    assert SECRET not in server.log.read_text()


def test_text_lines_name_the_job_the_client_and_the_outcome(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG)
    try:
        job = call(server, "POST", SUBMIT, json=body())["data"]["_id"]
        wait_for(server, job)
        wait_until(lambda: "outcome=completed" in server.log.read_text(), "the job's outcome=completed line")
    finally:
        server.stop()
    line = next(line for line in server.log.read_text().splitlines() if "outcome=completed" in line)
    assert f"job_id={job}" in line and "client_id=alpha" in line and " INFO " in line


def test_an_unknown_log_level_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "serve", "--data-dir", str(tmp_path), "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COMPOSITOR_LOG_LEVEL": "loud", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "log level" in done.stderr


def test_a_port_in_use_is_one_line_naming_it_and_how_to_choose_another(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "compositor.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and done.stdout == ""  # no banner, no curl line
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "COMPOSITOR_PORT" in lines[0]


def test_a_bad_compositor_clients_is_reported_as_that_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COMPOSITOR_CLIENTS": "no-colon-here"},
    )
    assert done.returncode == 2 and "COMPOSITOR_CLIENTS" in done.stderr and "--client" not in done.stderr
