from __future__ import annotations

import contextlib
import http.server
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from compositor.sourcemap import load_source_map
from compositor.sources import SourcePolicy

# No example is failed for its time: Hypothesis's default 200 ms deadline, and its check that generating data
# is not too slow, are timed assertions that a loaded machine breaks. A hang still ends in the test's timeouts.
settings.register_profile("compositor", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("compositor")


@pytest.fixture(autouse=True)
def render_threads_restored() -> Iterator[None]:
    """A test that runs a batch item in this process (`render_item` limits the
    process to one render thread, as a batch worker must be) leaves the next
    test the limit it found: render's overlap of template and foreground
    needs two threads."""
    from compositor.threads import limited, set_render_threads

    before = limited()
    yield
    set_render_threads(before)


REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
REQUESTS = FIXTURES / "requests"
IMAGES = FIXTURES / "images"
PEER = REPO.parent / "shared" / "peer-fixtures" / "rembg"
# The documented bodies name upstream's CDN; this maps those URLs to the stand-in images.
SOURCE_MAP_FILE = FIXTURES / "source-map.json"
SOURCE_MAP = load_source_map(SOURCE_MAP_FILE)


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """`handler` answering on a free loopback port, on threads: its base URL
    (no trailing slash), until the block ends."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def fixture_sources(base_dir: Path) -> SourcePolicy:
    """What the fixtures' bodies read: paths relative to `base_dir`, and the CDN URLs through the map."""
    return SourcePolicy(base_dir=base_dir, source_map=SOURCE_MAP)


def minimal_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "canvas_size": "64x48",
        "origin_img": "fg.png",
        "modify_origin_img_size": "16x16",
        "overlay_origin_x": 4,
        "overlay_origin_y": 8,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def load_request(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS / f"{name}.json").read_text())


def png_bytes(image: Image.Image, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def premultiplied(image: Image.Image) -> np.ndarray:
    """RGBA as premultiplied float: the colour that actually shows, so that
    the ill-defined colour of nearly transparent pixels does not count."""
    a = np.asarray(image.convert("RGBA")).astype(np.float64)
    out = a.copy()
    out[..., :3] = a[..., :3] * a[..., 3:4] / 255.0
    return out


def solid(mode: str, size: tuple[int, int], colour: Any) -> Image.Image:
    return Image.new(mode, size, colour)


@pytest.fixture
def write_image(tmp_path: Path):
    def write(name: str, image: Image.Image, **params: Any) -> str:
        path = tmp_path / name
        image.save(path, **params)
        return str(path)

    return write


@contextlib.contextmanager
def loopback_cluster(workers: int = 2) -> Iterator[Any]:
    """A Dask LocalCluster of one-thread worker processes (two by default), everything on
    127.0.0.1. Its nanny writes its workers' settings (MALLOC_TRIM_THRESHOLD_,
    OMP_NUM_THREADS) into this process's environment, where every later test's
    subprocess would inherit them: the environment is put back after it. Workers
    take the environment as it is when the cluster starts (an S3 server's settings,
    say), as a real cluster's take theirs from their machines."""
    import os

    from distributed import LocalCluster

    saved = dict(os.environ)
    try:
        with LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=50,
        ) as cluster:
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(saved)
