"""Downloads are whole or 404: a result deleted while it is being served (by
expiry or a reset) is either served whole from the handle opened before the
answer began, or answered with the 404 envelope; never a Content-Length with
no body."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from starlette.responses import JSONResponse

from compositor.mirror.downloads import open_file_response
from tests.test_mirror import CONFIG, SUBMIT, body, call, start_server, wait_for


def _missing() -> JSONResponse:
    return JSONResponse({"code": 1003, "msg": "gone"}, status_code=404)


async def _read(response) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join([chunk async for chunk in response.body_iterator])


def test_a_file_deleted_after_the_answer_began_is_served_whole(tmp_path: Path) -> None:
    result = tmp_path / "r.png"
    result.write_bytes(bytes(range(256)) * 4096)  # 1 MiB: several chunks
    response = open_file_response(result, "image/png", _missing)
    result.unlink()
    assert response.headers["content-length"] == str(1024 * 1024)
    assert asyncio.run(_read(response)) == bytes(range(256)) * 4096


def test_a_file_deleted_before_the_answer_is_the_routes_404(tmp_path: Path) -> None:
    assert open_file_response(tmp_path / "gone.png", "image/png", _missing).status_code == 404
    assert open_file_response(None, "image/png", _missing).status_code == 404


def test_downloads_racing_resets_are_whole_or_404(tmp_path: Path) -> None:
    """Each round: a result, downloads of it from two threads, and a reset (which deletes results the way
    expiry does) fired while they run; every answer is the whole PNG or the 404 envelope."""
    server = start_server(tmp_path / "data", CONFIG)
    outcomes: Counter[str] = Counter()
    broken: list[str] = []

    def download_until_gone(url: str) -> None:
        with httpx.Client(timeout=30) as client:
            for _ in range(2000):
                try:
                    answer = client.get(url)
                except httpx.HTTPError as exc:  # a body cut short comes out here
                    broken.append(repr(exc))
                    return
                if answer.status_code == 404 and answer.json()["code"] == 1003:
                    outcomes["404"] += 1
                    return
                length = int(answer.headers.get("content-length", -1))
                if answer.status_code != 200 or len(answer.content) != length or answer.content[:4] != b"\x89PNG":
                    broken.append(f"{answer.status_code}: {len(answer.content)} bytes, content-length {length}")
                    return
                outcomes["whole"] += 1

    try:
        for round_ in range(25):
            url = wait_for(server, call(server, "POST", SUBMIT, json=body())["data"]["_id"])["image"]
            downloaders = [threading.Thread(target=download_until_gone, args=(url,)) for _ in range(2)]
            for thread in downloaders:
                thread.start()
            time.sleep(0.002 * round_)
            assert httpx.post(server.base + "/_mirror/reset", json={}, timeout=30).status_code == 200
            for thread in downloaders:
                thread.join(timeout=60)
    finally:
        server.stop()
    assert broken == [], broken[:3]
    assert outcomes["404"] == 50 and outcomes["whole"] > 0, outcomes
