"""Source maps: a body keeps its real upstream URLs and renders offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from compositor import RenderOptions, SourceError, SourcePolicy, render
from compositor.sourcemap import SourceMap, load_source_map
from compositor.sources import read_source
from tests.conftest import IMAGES
from tests.test_mirror import CONFIG, SUBMIT, call, start_server, wait_for

CDN = "https://cdn.example.com/public/"


def cdn_body() -> dict[str, object]:
    return {
        "canvas_size": "120x90",
        "color_code": "#aafbe3",
        "template_url": CDN + "template.jpg",
        "modify_template_size": "80x80",
        "overlay_template_x": 50,
        "overlay_template_y": -6,
        "origin_img": "https://other.example.com/foreground.png?token=abc",
        "modify_origin_img_size": "60x70",
        "overlay_origin_x": -7,
        "overlay_origin_y": 8,
    }


@pytest.fixture
def map_file(tmp_path: Path) -> Path:
    path = tmp_path / "maps" / "sources.json"
    path.parent.mkdir()
    entries = {CDN: str(IMAGES), "https://other.example.com/foreground.png?token=abc": str(IMAGES / "foreground.png")}
    path.write_text(json.dumps(entries))
    return path


def local_render() -> Image.Image:
    body = {**cdn_body(), "template_url": str(IMAGES / "template.jpg"), "origin_img": str(IMAGES / "foreground.png")}
    return render(body, options=RenderOptions(sources=SourcePolicy()))


def test_a_mapped_body_renders_as_its_local_files_do(map_file: Path) -> None:
    policy = SourcePolicy(source_map=load_source_map(map_file), allow_http=False)  # nothing may be fetched
    mapped = render(cdn_body(), options=RenderOptions(sources=policy))
    assert np.array_equal(np.asarray(mapped), np.asarray(local_render()))


def test_relative_paths_resolve_against_the_map_files_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / "images" / "a.png")
    (tmp_path / "map.json").write_text(json.dumps({"https://x.example/img/": "./images/"}))
    source_map = load_source_map(tmp_path / "map.json")
    assert source_map.resolve("https://x.example/img/a.png", "origin_img") == (tmp_path / "images" / "a.png").resolve()


def test_an_exact_url_wins_over_a_prefix_and_a_longer_prefix_over_a_shorter(tmp_path: Path) -> None:
    source_map = SourceMap.from_entries(
        {
            "https://x/": tmp_path / "short",
            "https://x/a/": tmp_path / "long",
            "https://x/a/b.png": tmp_path / "exact.png",
        }
    )
    assert source_map.resolve("https://x/a/b.png", "f") == tmp_path / "exact.png"
    assert source_map.resolve("https://x/a/c.png", "f") == (tmp_path / "long" / "c.png").resolve()
    assert source_map.resolve("https://x/c.png", "f") == (tmp_path / "short" / "c.png").resolve()
    assert source_map.resolve("https://y/c.png", "f") is None


def test_a_prefix_cannot_reach_outside_its_folder(tmp_path: Path) -> None:
    source_map = SourceMap.from_entries({"https://x/img/": tmp_path / "images"})
    with pytest.raises(SourceError, match="outside its folder"):
        read_source("https://x/img/..%2f..%2fetc%2fpasswd", "origin_img", SourcePolicy(source_map=source_map))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compositor.cli", *args], capture_output=True, text=True, timeout=60)


def test_render_takes_a_source_map(map_file: Path, tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text(json.dumps(cdn_body()))
    done = run_cli(
        "render", str(tmp_path / "body.json"), "-o", str(tmp_path / "out.png"), "--source-map", str(map_file)
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(local_render()))


def test_a_source_map_that_is_not_json_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text(json.dumps(cdn_body()))
    (tmp_path / "map.json").write_text("{nope")
    done = run_cli(
        "render", str(tmp_path / "body.json"), "-o", str(tmp_path / "o.png"), "--source-map", str(tmp_path / "map.json")
    )
    assert done.returncode == 2 and "not valid JSON" in done.stderr and "Traceback" not in done.stderr


def test_validate_warns_when_the_map_points_at_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "body.json").write_text(json.dumps(cdn_body()))
    (tmp_path / "map.json").write_text(json.dumps({CDN: "./nowhere/"}))
    done = run_cli("validate", str(tmp_path / "body.json"), "--json", "--source-map", str(tmp_path / "map.json"))
    warnings = json.loads(done.stdout)["data"]["warnings"]
    assert any(w["field"] == "template_url" and "not a file" in w["message"] for w in warnings)


def test_the_mirror_renders_mapped_urls_without_fetching_them(map_file: Path, tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--source-map", str(map_file))
    try:
        job = call(server, "POST", SUBMIT, json=cdn_body())["data"]
        done = wait_for(server, job["_id"])
        assert done["image_status"] == 3, done
        picture = Image.open(__import__("io").BytesIO(httpx.get(done["image"]).content))
        assert np.array_equal(np.asarray(picture), np.asarray(local_render()))
    finally:
        server.stop()


def test_the_mirrors_own_uploads_are_read_from_disk_even_when_private_networks_are_refused(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--allow-private-networks", "false")
    try:
        png = (IMAGES / "foreground.png").read_bytes()
        url = httpx.post(
            server.base + "/uploads", content=png, headers={"content-type": "image/png"}, timeout=30
        ).json()["data"]["url"]
        job = call(server, "POST", SUBMIT, json={**cdn_body(), "template_url": url, "origin_img": url})["data"]
        assert wait_for(server, job["_id"])["image_status"] == 3
    finally:
        server.stop()


def test_a_successful_submit_carries_the_bodys_warnings(tmp_path: Path, map_file: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--source-map", str(map_file))
    try:
        body = {k: v for k, v in cdn_body().items() if k != "template_url"} | {"unknown_field": 1}
        answer = call(server, "POST", SUBMIT, json=body)
        assert answer["code"] == 1000
        fields = {w["field"] for w in answer["data"]["warnings"]}
        assert {"unknown_field", "modify_template_size", "overlay_template_x"} <= fields
    finally:
        server.stop()
