"""Who may use the control plane of a real server, scenarios loaded at start,
and a dropped connection as the server makes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import requests

from compositor.client import MirrorControl, MirrorControlError
from tests.test_controls import SUBMIT, body
from tests.test_mirror import CONFIG, INFO, SECRET, free_port, start_server, wait_until

TOKEN = "admin-token-for-tests"


def test_with_an_admin_token_every_control_call_needs_it(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG, "--admin-token", TOKEN)
    try:
        assert httpx.get(f"{server.base}/_mirror/jobs").status_code == 401
        assert httpx.get(f"{server.base}/_mirror/jobs", headers={"x-mirror-admin": "wrong"}).status_code == 401
        assert httpx.post(f"{server.base}/_mirror/reset").status_code == 401
        assert MirrorControl(server.base, admin_token=TOKEN).jobs() == []
        with pytest.raises(MirrorControlError) as refused:
            MirrorControl(server.base).faults()
        assert refused.value.status == 401
    finally:
        server.stop()


def test_the_admin_token_can_come_from_the_environment(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG, env={"COMPOSITOR_ADMIN_TOKEN": TOKEN})
    try:
        assert httpx.get(f"{server.base}/_mirror/faults").status_code == 401
        assert MirrorControl(server.base, admin_token=TOKEN).faults() == []
    finally:
        server.stop()


def test_off_loopback_without_a_token_the_control_plane_does_not_exist(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG, "--host", "0.0.0.0")
    try:
        answer = httpx.get(f"{server.base}/_mirror/jobs")
        assert answer.status_code == 404 and answer.json()["code"] == 1003
        assert httpx.post(f"{server.base}/_mirror/faults", json={"code": 1005}).status_code == 404
        # and the API answers as ever
        assert httpx.post(f"{server.base}{SUBMIT}", json=body(), headers={"x-api-key": SECRET}).json()["code"] == 1000
    finally:
        server.stop()


def test_off_loopback_with_a_token_the_control_plane_answers_it(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG, "--host", "0.0.0.0", "--admin-token", TOKEN)
    try:
        assert httpx.get(f"{server.base}/_mirror/jobs").status_code == 401
        assert MirrorControl(server.base, admin_token=TOKEN).jobs() == []
    finally:
        server.stop()


SCENARIO = """
[[faults]]
operation = "replace"
code = 1005
times = 1

[[faults]]
operation = "info"
latency_ms = 10

[policy]
queueing_polls = 2
"""


def test_a_scenario_file_starts_the_mirror_misbehaving(tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    server = start_server(tmp_path / "data", CONFIG, "--scenario", str(scenario))
    try:
        headers = {"x-api-key": SECRET}
        assert httpx.post(f"{server.base}{SUBMIT}", json=body(), headers=headers).json()["code"] == 1005
        job = httpx.post(f"{server.base}{SUBMIT}", json=body(), headers=headers).json()["data"]
        polls = [
            httpx.get(f"{server.base}{INFO}", params={"image_model_id": job["_id"]}, headers=headers).json()["data"]
            for _ in range(2)
        ]
        assert [p["image_status"] for p in polls] == [1, 1]
        assert [rule["operation"] for rule in MirrorControl(server.base).faults()] == ["replace", "info"]
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[[faults]]\ncode = 1005\nprobability = 2\n", "faults[0].probability"),
        ('[[faults]]\noperation = "upload"\ncode = 1005\n', "faults[0].operation"),
        ("[policy]\nprocessing_polls = -1\n", "policy.processing_polls"),
        ("[faults\n", "not valid TOML"),
        ("[chaos]\nlevel = 3\n", "chaos"),
    ],
)
def test_a_bad_scenario_stops_the_start_with_one_line_naming_the_field(tmp_path: Path, text: str, named: str) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    argv = [sys.executable, "-m", "compositor.cli", "serve", "--port", str(free_port())]
    argv += ["--data-dir", str(tmp_path / "data"), "--scenario", str(scenario)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_dropped_connection_gets_no_answer_and_the_server_logs_no_error(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG)
    try:
        MirrorControl(server.base).add_fault(operation="replace", drop=True, times=2)
        for _ in range(2):
            with pytest.raises(requests.ConnectionError):
                requests.post(f"{server.base}{SUBMIT}", json=body(), headers={"x-api-key": SECRET}, timeout=10)
        answer = requests.post(f"{server.base}{SUBMIT}", json=body(), headers={"x-api-key": SECRET}, timeout=10)
        assert answer.json()["code"] == 1000
        # The journal is written once each request is over: then whatever it logged is in the log too.
        wait_until(lambda: len(MirrorControl(server.base).requests()) == 3, "the three calls in the journal")
        log = server.log.read_text()
        assert "Exception in ASGI application" not in log and "without starting response" not in log
        journal = MirrorControl(server.base).requests()
        assert [entry["http_status"] for entry in journal] == [None, None, 200]
    finally:
        server.stop()


def test_jobs_held_by_a_policy_survive_a_restart(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG)
    headers = {"x-api-key": SECRET}
    try:
        MirrorControl(server.base).set_job_policy(queueing_polls=1, processing_polls=1)
        job = httpx.post(f"{server.base}{SUBMIT}", json=body(), headers=headers).json()["data"]
    finally:
        server.stop()
    server = start_server(tmp_path, CONFIG, port=int(server.base.rsplit(":", 1)[1]))
    try:
        statuses = [
            httpx.get(f"{server.base}{INFO}", params={"image_model_id": job["_id"]}, headers=headers).json()["data"][
                "image_status"
            ]
            for _ in range(2)
        ]
        assert statuses == [1, 2]
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "jobs.sqlite3")


def test_a_drop_is_a_drop_whatever_x_forwarded_for_says(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG)
    try:
        MirrorControl(server.base).add_fault(operation="info", drop=True)
        with pytest.raises(requests.ConnectionError):
            requests.get(
                f"{server.base}{INFO}",
                params={"image_model_id": "x"},
                headers={"x-api-key": SECRET, "x-forwarded-for": "203.0.113.9"},
                timeout=10,
            )
        wait_until(lambda: len(MirrorControl(server.base).requests()) == 1, "the dropped call in the journal")
        assert "Exception in ASGI application" not in server.log.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example", "content-type": "application/json"},
        {"host": "attacker.example", "content-type": "application/json"},
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"sec-fetch-site": "cross-site", "content-type": "application/json"},
    ],
)
def test_open_controls_refuse_what_a_web_page_could_send(tmp_path: Path, headers: dict[str, str]) -> None:
    server = start_server(tmp_path, CONFIG)
    try:
        answer = httpx.post(f"{server.base}/_mirror/faults", content=b'{"code": 1005}', headers=headers)
        assert answer.status_code == 403 and "error" in answer.json()
        peek = httpx.get(f"{server.base}/_mirror/requests", headers={"host": "attacker.example"})
        assert peek.status_code == 403
        assert MirrorControl(server.base).faults() == []
    finally:
        server.stop()


def test_a_control_body_over_the_cap_is_413_in_the_controls_shape(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG)
    try:
        answer = httpx.post(
            f"{server.base}/_mirror/faults",
            content=b"x" * (2 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 413 and answer.json()["field"] == "body"
    finally:
        server.stop()
