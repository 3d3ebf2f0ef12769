"""The pytest plugin as a user's suite meets it: a test file in a folder of
its own, no conftest, the fixtures found through the package's entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def run_user_suite(folder: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    """pytest on one test file in a folder of its own, as a user's suite runs."""
    (folder / name).write_text(text)
    return subprocess.run(
        # -W error: a suite that makes warnings errors must not fail for the fixtures' sake (an unclosed socket).
        [sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider", name],
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
    with open("server.pid", "w") as out:
        out.write(str(bg_mirror.server_pid))
    time.sleep(120)
"""


def test_the_server_ends_when_pytest_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import time

    (tmp_path / "test_slow.py").write_text(SLOW_USER_TEST)
    suite = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_slow.py"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = tmp_path / "server.pid"
    deadline = time.monotonic() + 120
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    server_pid = int(pid_file.read_text())
    suite.send_signal(signal.SIGKILL)  # nothing of pytest's runs: no teardown
    suite.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{server_pid}/stat") as stat:
            if stat.read().split()[2] == "Z":  # ended, waiting for init to reap it
                return
        time.sleep(0.2)
    raise AssertionError(f"the bg_mirror server {server_pid} outlived the killed pytest")
