"""A job can only ever fail itself. Whatever a stored job holds (text that an
older version let in, a record that cannot be read back, a result too large
for the disk), the dispatcher and the outbox go on with every other job, and
this holds across restarts."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from compositor.mirror.accounts import Client
from compositor.mirror.controls import JobPolicy
from compositor.mirror.jobs import JobStore
from tests.test_mirror import CONFIG, INFO, SECRET, SUBMIT, body, call, start_server, wait_for
from tests.test_mirror_faults import fill, tmpfs  # noqa: F401  (a fixture)

ALPHA = Client("alpha", SECRET)


def _stored_before_the_door(data_dir: Path) -> dict[str, str]:
    """Jobs as a version without the text rule could have stored them, written straight into the store."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(data_dir / "jobs.sqlite3")
    hostile_hook = store.create(ALPHA, body(webhookUrl="http://127.0.0.1:9/\udc80")).id
    held = store.create(ALPHA, body(webhookUrl="http://127.0.0.1:9/\udc81"), JobPolicy(queueing_polls=1000)).id
    unreadable = store.create(ALPHA, body()).id
    store._database._db.execute("UPDATE jobs SET body = '{not json' WHERE id = ?", (unreadable,))
    store.close()
    return {"hostile_hook": hostile_hook, "held": held, "unreadable": unreadable}


def test_jobs_stored_with_hostile_text_stop_no_other_job_across_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    stored = _stored_before_the_door(data)
    server = start_server(data, CONFIG)
    try:
        good = call(server, "POST", SUBMIT, json=body())["data"]["_id"]
        assert wait_for(server, good)["image_status"] == 3
        hostile = wait_for(server, stored["hostile_hook"])
        assert hostile["image_status"] == 4 and "not valid Unicode" in hostile["error_reasons"][0]
        unreadable = wait_for(server, stored["unreadable"])
        assert unreadable["image_status"] == 4 and "is not JSON" in unreadable["error_reasons"][0]
        by_hand = httpx.post(f"{server.base}/_mirror/jobs/{stored['held']}/fail", json={"reason": "stop"}, timeout=30)
        assert by_hand.status_code == 200 and by_hand.json()["image_status"] == 4
        for path in ("/_mirror/jobs", "/_mirror/webhooks", "/_mirror/requests"):
            assert httpx.get(server.base + path, timeout=30).status_code == 200
        server.stop()
        server = start_server(data, CONFIG)  # the same store again: nothing sticks
        after = call(server, "POST", SUBMIT, json=body())["data"]["_id"]
        assert wait_for(server, after)["image_status"] == 3
        assert "trying again" not in server.log.read_text()
    finally:
        server.stop()


def _noise_png(path: Path, side: int) -> Path:
    """A picture that does not compress: its composite's PNG is about side * side * 4 bytes."""
    pixels = np.random.default_rng(7).integers(0, 256, (side, side, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG", compress_level=0)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_result_too_large_for_the_disk_waits_aside_while_the_jobs_behind_it_run(
    tmpfs: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    noise = _noise_png(tmp_path / "noise.png", 1024)  # a result of about 4 MB
    # One render worker, so that a large job retried at the head of the line would keep the small ones waiting.
    server = start_server(tmpfs / "data", CONFIG, "--allow-file-root", str(tmp_path), "--workers", "1")
    try:
        assert wait_for(server, call(server, "POST", SUBMIT, json=body())["data"]["_id"])["image_status"] == 3
        filler = fill(tmpfs)
        with filler.open("r+b") as file:  # about 1.5 MB free: room for small results, not for the large one
            file.truncate(max(0, filler.stat().st_size - 1536 * 1024))
        large_body = body(
            canvas_size="1024x1024", origin_img=noise.as_uri(), modify_origin_img_size="1024x1024", overlay_origin_x=0
        ) | {"overlay_origin_y": 0}
        large = call(server, "POST", SUBMIT, json=large_body)["data"]["_id"]
        small = [
            call(server, "POST", SUBMIT, json=body(canvas_size="64x64", modify_origin_img_size="32x32"))["data"]["_id"]
            for _ in range(3)
        ]
        for job_id in small:
            assert wait_for(server, job_id, timeout=90)["image_status"] == 3
        assert call(server, "GET", INFO, params={"image_model_id": large})["data"]["image_status"] in (1, 2)
        log = server.log.read_text()
        tries = len(re.findall(rf"job {large}: no space", log))
        assert 1 <= tries <= 4, log[-3000:]  # set aside with a growing wait, never retried at the head of the line
        filler.unlink()
        assert wait_for(server, large, timeout=120)["image_status"] == 3
    finally:
        server.stop()
        shutil.copy(server.log, tmp_path / "server.log")  # the small disk goes with the test: keep its log
