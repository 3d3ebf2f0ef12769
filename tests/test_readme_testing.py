"""The examples of the docs' "Testing your integration" page run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from compositor.mirror.controls import load_scenario
from tests.conftest import REPO
from tests.test_mirror import CONFIG, start_server
from tests.test_pytest_plugin import run_user_suite


def _blocks(language: str) -> list[str]:
    page = (REPO / "docs" / "testing.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", page, re.DOTALL)


def test_the_mock_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    exec(compile(_blocks("python")[0], "README mock example", "exec"), {})


def test_the_fixture_example_passes_in_a_users_suite(tmp_path: Path) -> None:
    done = run_user_suite(tmp_path, "test_readme.py", _blocks("python")[1])
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


def test_the_curl_example_runs_against_a_server(tmp_path: Path) -> None:
    server = start_server(tmp_path, CONFIG)
    try:
        script = _blocks("sh")[0].replace("BASE=http://127.0.0.1:8080", f"BASE={server.base}")
        preamble, *lines = script.splitlines()
        for line in lines:
            done = subprocess.run(["bash", "-c", f"{preamble}; {line}"], capture_output=True, text=True, timeout=30)
            answer = json.loads(done.stdout)
            assert "error" not in answer, (line, answer)
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "jobs.sqlite3")


def test_the_scenario_example_loads(tmp_path: Path) -> None:
    scenario = tmp_path / "flaky.toml"
    scenario.write_text(_blocks("toml")[-1])
    loaded = load_scenario(scenario)
    assert len(loaded.faults) == 3 and loaded.policy == {"queueing_polls": 2, "processing_polls": 1}
