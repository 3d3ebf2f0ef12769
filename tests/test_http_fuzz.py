"""A seeded fuzz run through the whole HTTP surface of a real mirror: a few
thousand mutated bodies, mutated images through /uploads and the preview,
and odd paths, methods and headers. Not one may answer a 5xx, and every API
answer is the envelope. The seed is fixed, so a failure repeats."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import IMAGES
from tests.test_mirror import CONFIG, SECRET, SUBMIT, Server, start_server

SEED = 20261125
BODIES = 2500
IMAGES_SENT = 500
ODD_REQUESTS = 300

_WEIRD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    10**200,
    1e308,
    float("inf") if False else 1.5,
    "",
    " ",
    "0x0",
    "-5x5",
    "99999999999999999999x1",
    "1x1",
    "64x64",
    "#zzzzzz",
    "#fff",
    "\u0000",
    "\ud7ff\ue000",
    "x" * 5000,
    "http://[::1/a.png",
    "http://127.0.0.1:1/a.png",
    "file:///etc/passwd",
    "file:///dev/zero",
    "data:image/png;base64,!!!",
    "data:,",
    "ftp://example.com/a.png",
    "../../../etc/passwd",
    [],
    {},
    [1, [2, [3]]],
    {"a": {"b": {"c": 1}}},
]


def mutated_body(rng: random.Random, base: dict[str, Any]) -> Any:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(_WEIRD_VALUES)
    body = dict(base)
    for _ in range(rng.randint(1, 4)):
        action = rng.random()
        keys = [*base, "removeBg", "webhookUrl", "color_code", "unknown", "\ud800" if False else "é"]
        key = rng.choice(keys)
        if action < 0.3:
            body.pop(key, None)
        elif action < 0.8:
            body[key] = rng.choice(_WEIRD_VALUES)
        else:
            body[key] = rng.randint(-(10**6), 10**6)
    return body


def mutated_image(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        position = rng.randrange(len(data))
        if kind < 0.5:
            data[position] = rng.randrange(256)
        elif kind < 0.8:
            del data[position : position + rng.randint(1, 64)]
        else:
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    if rng.random() < 0.1:
        data = data[: rng.randrange(1, len(data))]
    return bytes(data)


def image_seeds() -> list[bytes]:
    seeds = []
    picture = Image.open(IMAGES / "foreground.png").convert("RGBA").resize((24, 30))
    for fmt, mode in (("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "RGB"), ("GIF", "P"), ("WEBP", "RGBA"), ("PNG", "I;16")):
        buffer = io.BytesIO()
        converted = picture.convert("L").convert("I;16") if mode == "I;16" else picture.convert(mode)
        converted.save(buffer, fmt)
        seeds.append(buffer.getvalue())
    return seeds


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("fuzz"), CONFIG)
    yield running
    running.stop()


def check(response: httpx.Response, where: str) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    if (
        response.request.method != "HEAD"
        and response.url.path != "/openapi.json"
        and response.headers.get("content-type", "").startswith("application/json")
    ):
        answer = response.json()
        assert isinstance(answer.get("code"), int), f"{where}: {answer}"


def test_thousands_of_mutated_bodies_get_no_server_error(fuzz_server: Server, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    base = {
        "canvas_size": "48x40",
        "origin_img": (IMAGES / "foreground.png").as_uri(),
        "modify_origin_img_size": "20x24",
        "overlay_origin_x": 3,
        "overlay_origin_y": -4,
        "template_url": (IMAGES / "template.jpg").as_uri(),
        "modify_template_size": "30x30",
        "overlay_template_x": 10,
        "overlay_template_y": 5,
    }
    payloads = []
    for _ in range(BODIES):
        body = mutated_body(rng, base)
        raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
        if rng.random() < 0.05:
            raw = raw[: rng.randrange(len(raw) + 1)]
        payloads.append(raw)

    def send(raw: bytes) -> None:
        headers = {"x-api-key": SECRET, "content-type": "application/json"}
        response = http.post(fuzz_server.base + SUBMIT, content=raw, headers=headers)
        check(response, f"body {raw[:200]!r}")
        assert response.status_code == 200

    # One client for every thread: making one costs an SSL context (about 20 ms).
    with httpx.Client(timeout=30) as http, ThreadPoolExecutor(4) as pool:
        list(pool.map(send, payloads))


def test_hundreds_of_mutated_images_get_no_server_error(fuzz_server: Server) -> None:
    rng = random.Random(SEED + 1)
    seeds = image_seeds()
    images = [mutated_image(rng, seeds) for _ in range(IMAGES_SENT)]

    def send(data: bytes) -> None:
        uploaded = http.post(fuzz_server.base + "/uploads", content=data, headers={"content-type": "image/png"})
        check(uploaded, f"upload of {len(data)} bytes")
        if uploaded.json().get("code") != 1000:
            return
        body = {
            "canvas_size": "64x64",
            "origin_img": uploaded.json()["data"]["url"],
            "modify_origin_img_size": "32x32",
            "overlay_origin_x": 0,
            "overlay_origin_y": 0,
        }
        preview = http.post(
            fuzz_server.base + "/preview/render",
            content=json.dumps({"body": body}),
            headers={"content-type": "application/json"},
        )
        check(preview, f"preview of {body['origin_img']}")

    with httpx.Client(timeout=60) as http, ThreadPoolExecutor(3) as pool:
        list(pool.map(send, images))


def test_odd_paths_methods_and_headers_get_no_server_error(fuzz_server: Server) -> None:
    rng = random.Random(SEED + 2)
    paths = [
        SUBMIT,
        "/api/open/v3/content/image/infobymodelid",
        "/api/open/v3/getToken",
        "/results/%00.png",
        "/results/..%2f..%2fetc%2fpasswd",
        "/uploads/%2e%2e",
        "/static/..%2fapp.js",
        "/preview/render",
        "/preview/full",
        "/preview/validate",
        "/" + "a" * 3000,
        "/docs",
        "/openapi.json",
    ]
    headers_pool: list[dict[str, str]] = [
        {},
        {"x-api-key": SECRET},
        {"x-api-key": "x" * 10000},
        {"authorization": "Bearer " + "a.b.c"},
        {"authorization": "Basic Zm9vOmJhcg=="},
        {"content-type": "application/json"},
        {"content-type": "text/plain", "origin": "https://evil.example"},
        {"host": "evil.example"},
        {"content-length": "3"},
    ]
    with httpx.Client(timeout=30) as http:
        for _ in range(ODD_REQUESTS):
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
            path = rng.choice(paths)
            query = rng.choice(["", "?image_model_id=", "?image_model_id=" + "f" * 24, "?image_model_id=%00", "?a=b"])
            headers = dict(rng.choice(headers_pool))
            content = rng.choice([b"", b"{}", b"[", b'{"body": 5}', b"\xff" * 10])
            if headers.get("content-length"):
                headers["content-length"] = str(len(content))
            response = http.request(method, fuzz_server.base + path + query, headers=headers, content=content)
            check(response, f"{method} {path}{query} {headers}")
