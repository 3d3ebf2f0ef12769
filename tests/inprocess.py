"""A mirror in this process, driven through its ASGI app over no socket
(httpx's ASGI transport, as the mock drives it): jobs render in the polling thread (`inline`), so
these tests start no worker process. For behaviours of the HTTP layer and the
back end that need no real server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from compositor.mirror.accounts import Client
from compositor.mirror.responses import create_app
from compositor.mirror.service import Mirror, MirrorSettings
from compositor.testing import RESULTS_BASE_URL, _InProcessClient
from tests.conftest import FIXTURES

SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"
TOKEN = "/api/open/v3/getToken"
SECRET = "in-process-secret-of-32-bytes-00"
CLIENT = Client("alpha", SECRET, quota=40)
KEY = {"x-api-key": SECRET}
HOST = httpx.URL(RESULTS_BASE_URL).host  # named as a page host, so the page and the controls answer it


@contextmanager
def in_process_mirror(data_dir: Path, **settings: Any) -> Iterator[tuple[Mirror, _InProcessClient]]:
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "clients": (CLIENT,),
        "public_base_url": RESULTS_BASE_URL,
        "workers": 1,
        "file_roots": (FIXTURES,),
        "inline": True,
        "controls_open": True,
        "page_hosts": (HOST,),
    }
    mirror = Mirror(MirrorSettings(**(options | settings)))
    client = _InProcessClient(create_app(mirror))
    client.open()
    mirror.start()
    try:
        yield mirror, client
    finally:
        mirror.stop()
        client.close()


def body(**overrides: Any) -> dict[str, Any]:
    """A small valid body over the fixtures' own images."""
    return {
        "canvas_size": "64x64",
        "origin_img": str(FIXTURES / "images" / "foreground.png"),
        "modify_origin_img_size": "32x32",
        "overlay_origin_x": 4,
        "overlay_origin_y": 4,
        "color_code": "#336699",
    } | overrides


def credits_used(mirror: Mirror) -> int:
    rows = mirror.store._database.read("SELECT COALESCE(SUM(used), 0) AS used FROM credits")
    return int(rows[0]["used"])
