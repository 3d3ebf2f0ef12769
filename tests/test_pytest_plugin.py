"""The pytest plugin as a user's suite meets it: a test file in a folder of
its own, no conftest, the fixtures found through the package's entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

USER_TESTS = """
import requests

def test_with_a_real_mirror(bg_mirror):
    bg_mirror.add_fault(operation="replace", code=1005, times=1)
    url = bg_mirror.base_url + "/api/open/v3/content/image/bg/replace"
    body = {"canvas_size": "8x8", "color_code": "#112233", "origin_img": "data:image/png;base64,"
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
            "modify_origin_img_size": "4x4", "overlay_origin_x": 2, "overlay_origin_y": 2}
    headers = {"x-api-key": bg_mirror.api_key}
    assert requests.post(url, json=body, headers=headers).json()["code"] == 1005
    assert requests.post(url, json=body, headers=headers).json()["code"] == 1000
    assert len(bg_mirror.jobs()) == 1

def test_the_mirror_is_reset_between_tests(bg_mirror):
    assert bg_mirror.jobs() == [] and bg_mirror.faults() == [] and bg_mirror.requests() == []

def test_with_the_mock(mock_background_change):
    mock_background_change.set_job_policy(queueing_polls=1)
    answer = requests.post("https://openapi.akool.com/api/open/v3/content/image/bg/replace",
                           json={"canvas_size": "8x8", "color_code": "#112233"}, headers={"x-api-key": "k"})
    assert answer.json()["code"] == 1003  # no origin_img
    assert mock_background_change.requests()[0]["code"] == 1003
"""


PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def run_user_suite(folder: Path, name: str, text: str, *options: str) -> subprocess.CompletedProcess[str]:
    """pytest on one test file in a folder of its own, as a user's suite runs."""
    (folder / name).write_text(text)
    # A temporary root of its own, as pytester gives an inner pytest: in the shared
    # /tmp/pytest-of-USER, pytest's clean-up of other sessions' numbered folders
    # (running at once under a parallel suite) can leave an os.scandir iterator
    # unclosed, a ResourceWarning that -W error turns into a failure of this run.
    basetemp = folder / "basetemp"
    return subprocess.run(
        # -W error: a suite that makes warnings errors must not fail for the fixtures' sake (an unclosed socket).
        [*PYTEST, "-W", "error", f"--basetemp={basetemp}", *options, name],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_fixtures_work_in_a_users_own_suite(tmp_path: Path) -> None:
    done = run_user_suite(tmp_path, "test_user.py", USER_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    plugins = {entry.name: entry.value for entry in entry_points(group="pytest11")}
    assert plugins.get("compositor") == "compositor.pytest_plugin"


SLOW_USER_TEST = """
import os, time

def test_that_is_killed(bg_mirror):
    with open("server.pid.part", "w") as out:  # renamed once whole: the test never reads half a pid
        out.write(str(bg_mirror.server_pid))
    os.replace("server.pid.part", "server.pid")
    time.sleep(600)  # killed long before
"""


def test_the_server_ends_when_pytest_is_killed(tmp_path: Path) -> None:
    import contextlib
    import os
    import signal
    import time

    (tmp_path / "test_slow.py").write_text(SLOW_USER_TEST)
    output = tmp_path / "suite.out"
    with output.open("wb") as sink:
        suite = subprocess.Popen(
            [*PYTEST, f"--basetemp={tmp_path / 'basetemp'}", "test_slow.py"],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    pid_file = tmp_path / "server.pid"
    deadline = time.monotonic() + 180
    try:
        while not pid_file.exists():
            said = output.read_text(errors="replace")[-3000:] if suite.poll() is not None else ""
            assert suite.poll() is None, f"the user's suite ended ({suite.returncode}) before its test started:\n{said}"
            assert time.monotonic() < deadline, "waited 180 s for the user's test to start (server.pid)"
            time.sleep(0.2)
        server_pid = int(pid_file.read_text())
    finally:
        with contextlib.suppress(ProcessLookupError):
            suite.send_signal(signal.SIGKILL)  # nothing of pytest's runs: no teardown
        suite.wait(60)

    def ended(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # ended, waiting for init to reap it
        except (ProcessLookupError, FileNotFoundError):  # reaped already, or between the kill and the read
            return True

    deadline = time.monotonic() + 120  # the server's own stop, SIGTERM from the kernel, then its workers'
    while not ended(server_pid):
        assert time.monotonic() < deadline, f"the bg_mirror server {server_pid} outlived the killed pytest by 120 s"
        time.sleep(0.2)


# What a user's test needs to render a body whose sources are CDN URLs, and to wait for its job.
SOURCES_PRELUDE = """
import base64, time
import requests

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAF"
                       "BQIAX8jx0gAAAABJRU5ErkJggg==")

def render(bg_mirror, origin_img, template_url=None):
    body = {"canvas_size": "8x8", "origin_img": origin_img, "modify_origin_img_size": "4x4",
            "overlay_origin_x": 2, "overlay_origin_y": 2}
    if template_url is not None:
        body["template_url"] = template_url
    headers = {"x-api-key": bg_mirror.api_key}
    base = bg_mirror.base_url + "/api/open/v3/content/image/"
    answer = requests.post(base + "bg/replace", json=body, headers=headers).json()
    assert answer["code"] == 1000, answer
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = requests.get(base + "infobymodelid", params={"image_model_id": answer["data"]["_id"]},
                            headers=headers).json()["data"]
        if data["image_status"] in (3, 4):
            return data
        time.sleep(0.05)
    raise AssertionError("the job did not end")
"""

ADD_SOURCE_TESTS = (
    SOURCES_PRELUDE
    + """
def test_add_source_maps_cdn_urls_to_bytes_files_and_folders(bg_mirror, tmp_path):
    (tmp_path / "fg.png").write_bytes(PNG)
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "a b.png").write_bytes(PNG)
    bg_mirror.add_source("https://cdn.example.com/bytes.png", PNG)
    bg_mirror.add_source("https://cdn.example.com/img/fg.png", tmp_path / "fg.png")
    bg_mirror.add_source("https://other.example.org/shots/", tmp_path / "shots")
    for origin in ("https://cdn.example.com/bytes.png", "https://cdn.example.com/img/fg.png",
                   "https://other.example.org/shots/a%20b.png"):
        data = render(bg_mirror, origin, template_url="https://cdn.example.com/bytes.png")
        assert data["image_status"] == 3, (origin, data)

def test_sources_added_by_a_test_are_gone_in_the_next(bg_mirror):
    data = render(bg_mirror, "https://cdn.example.com/bytes.png")
    assert data["image_status"] == 4, data

def test_add_source_refuses_what_it_cannot_map(bg_mirror, tmp_path):
    import pytest
    with pytest.raises(ValueError):
        bg_mirror.add_source("https://cdn.example.com/img/", PNG)  # a prefix maps to a folder
    with pytest.raises(FileNotFoundError):
        bg_mirror.add_source("https://cdn.example.com/x.png", tmp_path / "missing.png")
    with pytest.raises(ValueError):
        bg_mirror.add_source("https://cdn.example.com/../../escape.png", PNG)
"""
)


def test_bg_mirror_add_source_maps_urls_for_one_test(tmp_path: Path) -> None:
    done = run_user_suite(tmp_path, "test_sources.py", ADD_SOURCE_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "3 passed" in done.stdout


SOURCE_MAP_TESTS = (
    SOURCES_PRELUDE
    + """
def test_the_suites_source_map_is_read_at_the_start(bg_mirror):
    assert render(bg_mirror, "https://cdn.example.com/mapped/fg.png")["image_status"] == 3
    assert render(bg_mirror, "https://cdn.example.com/exact.png")["image_status"] == 3

def test_and_kept_for_every_test(bg_mirror):
    assert render(bg_mirror, "https://cdn.example.com/exact.png")["image_status"] == 3
"""
)


def write_user_map(folder: Path) -> Path:
    import base64

    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    )
    (folder / "images").mkdir()
    (folder / "images" / "fg.png").write_bytes(png)
    (folder / "maps").mkdir()
    source_map = folder / "maps" / "map.json"  # its relative paths are the map file's folder's
    source_map.write_text(
        '{"https://cdn.example.com/mapped/": "../images/", "https://cdn.example.com/exact.png": "../images/fg.png"}'
    )
    return source_map


def test_a_source_map_given_on_the_command_line(tmp_path: Path) -> None:
    write_user_map(tmp_path)
    done = run_user_suite(tmp_path, "test_map.py", SOURCE_MAP_TESTS, "--compositor-source-map", "maps/map.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout


def test_a_source_map_named_in_the_ini_file(tmp_path: Path) -> None:
    write_user_map(tmp_path)
    (tmp_path / "pytest.ini").write_text("[pytest]\ncompositor_source_map = maps/map.json\n")
    done = run_user_suite(tmp_path, "test_map.py", SOURCE_MAP_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout


def test_the_server_starts_on_another_port_when_its_free_one_is_taken_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from compositor import pytest_plugin

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real_free_port = pytest_plugin._free_port
    monkeypatch.setattr(pytest_plugin, "_free_port", lambda: next(ports, None) or real_free_port())
    server = pytest_plugin.MirrorProcess(tmp_path)
    try:
        server.wait_until_ready()
        assert server.port != taken
        assert requests.get(f"{server.base_url}/_mirror/jobs", timeout=10).status_code == 200
    finally:
        server.stop()
        squatter.close()
