"""What the mirror's sweeps delete, and what they must leave: expiry takes stored uploads past their time to
live, never one still arriving (an upload's age counts from when it was stored); a start clears what a
stopped server left half-written, and nothing else."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from compositor.mirror import page
from tests.conftest import FIXTURES
from tests.inprocess import HOST, in_process_mirror

PNG = (FIXTURES / "images" / "foreground.png").read_bytes()
TTL_S = 60.0


def upload(client: Any) -> dict[str, Any]:
    answer = client.request("POST", "/uploads", content=PNG, headers={"content-type": "image/png", "host": HOST})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_expiry_takes_an_upload_past_its_time_to_live(tmp_path: Path) -> None:
    with in_process_mirror(tmp_path / "data", result_ttl_s=TTL_S) as (mirror, client):
        url = upload(client)["data"]["url"]
        stored = mirror.settings.uploads_dir / url.rsplit("/", 1)[1]
        age(stored, TTL_S + 5)
        mirror.expire_now()
        assert not stored.exists()


def test_expiry_leaves_an_upload_that_is_still_arriving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that takes longer than the time to live (a loaded machine) must not lose the upload: the sweep
    that runs meanwhile leaves the partial file alone, and the stored upload starts its life when stored."""
    with in_process_mirror(tmp_path / "data", result_ttl_s=TTL_S) as (mirror, client):
        probe = page.probe_upload

        def slow_probe(path: str, *args: Any) -> Any:
            age(Path(path), TTL_S + 5)  # as if the probe had waited past the time to live
            mirror.expire_now()
            return probe(path, *args)

        monkeypatch.setattr(page, "probe_upload", slow_probe)
        answer = upload(client)
        assert answer["code"] == 1000
        mirror.expire_now()
        assert client.request("GET", httpx.URL(answer["data"]["url"]).path).status_code == 200


def test_a_partial_upload_left_by_a_stopped_server_is_cleared_at_start(tmp_path: Path) -> None:
    uploads = tmp_path / "data" / "uploads"
    uploads.mkdir(parents=True)
    (uploads / ".upload-left-by-a-crash").write_bytes(b"half an image")
    (uploads / ".upload-a-folder-made-by-hand").mkdir()  # not the mirror's: left, and no reason to stop
    with in_process_mirror(tmp_path / "data", result_ttl_s=TTL_S):
        assert [path.name for path in uploads.iterdir()] == [".upload-a-folder-made-by-hand"]


def test_a_half_written_result_left_by_a_stopped_server_is_cleared_at_start(tmp_path: Path) -> None:
    results = tmp_path / "data" / "results"
    results.mkdir(parents=True)
    (results / ".0123456789abcdef01234567.png.compositor-k1ll3d00").write_bytes(b"\x89PNG cut")
    (results / "0123456789abcdef01234567.png").write_bytes(b"\x89PNG whole")
    (results / ".env.template").write_text("a file of someone's, in a --results folder they chose")
    with in_process_mirror(tmp_path / "data", result_ttl_s=TTL_S):
        assert sorted(path.name for path in results.iterdir()) == [".env.template", "0123456789abcdef01234567.png"]


def test_a_reset_leaves_the_result_of_a_job_that_completed_after_it_forgot_the_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traffic during a reset: a job submitted once the jobs are forgotten, and done before the reset ends, is
    the new state's, and keeps its result."""
    with in_process_mirror(tmp_path / "data", result_ttl_s=TTL_S) as (mirror, _):
        results = mirror.settings.results_dir
        (results / "0123456789abcdef01234567.png").write_bytes(b"\x89PNG an old result nobody recorded")
        forget_all = mirror.store.forget_all
        newcomer = results / "76543210fedcba9876543210.png"

        def forget_then_a_job_completes() -> list[str]:
            forgotten = forget_all()
            newcomer.write_bytes(b"\x89PNG a new job's result")
            return forgotten

        monkeypatch.setattr(mirror.store, "forget_all", forget_then_a_job_completes)
        mirror.reset()
        assert [path.name for path in results.iterdir()] == [newcomer.name]
