"""The docs' four example bodies, verbatim, and every documented way to run
them: make examples, the README's stdin line, the development mirror's curl
line, and the page's "Load example" menu (in real Chromium)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import REPO, REQUESTS, SOURCE_MAP_FILE
from tests.test_mirror import CONFIG, Server, start_development_server, start_server

# As the upstream docs print them.
DOCUMENTED = {
    "example-1-template-only": '{"canvas_size": "3840x3840", "template_url": "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png", "modify_template_size": "3830x3830", "overlay_template_x": 5, "overlay_template_y": 5, "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1711939252580-7e40bd1a-e480-42ed-8585-3f9ffccf6bdb-5822.png", "modify_origin_img_size": "3830x2145", "overlay_origin_x": 5, "overlay_origin_y": 849}',  # noqa: E501
    "example-2-color-only": '{"color_code": "#c9aafb", "canvas_size": "3840x3840", "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png", "modify_origin_img_size": "3060x3824", "overlay_origin_x": 388, "overlay_origin_y": 8}',  # noqa: E501
    "example-3-template-and-color": '{"color_code": "#aafbe3", "canvas_size": "3840x3840", "template_url": "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png", "modify_template_size": "3828x3828", "overlay_template_x": 2049, "overlay_template_y": -6, "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png", "modify_origin_img_size": "3062x3828", "overlay_origin_x": -72, "overlay_origin_y": -84}',  # noqa: E501
    "example-4-neither": '{"canvas_size": "3840x3840", "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png", "modify_origin_img_size": "3060x3824", "overlay_origin_x": 388, "overlay_origin_y": 8}',  # noqa: E501
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_the_fixture_is_the_documented_body_verbatim(name: str) -> None:
    stored = json.loads((REQUESTS / f"{name}.json").read_text())
    expected = json.loads(DOCUMENTED[name])
    assert stored == expected and list(stored) == list(expected)  # the same fields, in the docs' order


def test_the_page_offers_the_same_four_bodies() -> None:
    examples = json.loads((REPO / "compositor" / "mirror" / "static" / "examples.json").read_text())
    assert examples == {name: json.loads(text) for name, text in DOCUMENTED.items()}


def test_make_examples_renders_the_four_bodies(tmp_path: Path) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "examples", f"EXAMPLES_OUT={tmp_path}", f"BIN={Path(sys.executable).parent}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in DOCUMENTED:
        assert Image.open(tmp_path / f"{name}.png").size == (3840, 3840)


def test_the_readmes_stdin_line_works_from_the_repository_root(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("cat fixtures/requests/"))
    command = line.split("#")[0].strip().replace(".venv/bin/compositor", f"{sys.executable} -m compositor.cli")
    command = command.replace("> out.png", f"> {tmp_path / 'out.png'}")
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (3840, 3840)


def test_the_development_mirror_renders_the_banners_curl_body(tmp_path: Path) -> None:
    process, base = start_development_server(tmp_path / "dev")
    try:
        key = (tmp_path / "dev" / "development-client.header").read_text().split(":", 1)[1].strip()
        body = json.loads((REQUESTS / "example-3-template-and-color.json").read_text())
        job = httpx.post(base + "/api/open/v3/content/image/bg/replace", json=body, headers={"x-api-key": key}).json()
        assert job["code"] == 1000
        deadline = time.monotonic() + 180
        while True:
            record = httpx.get(
                base + "/api/open/v3/content/image/infobymodelid",
                params={"image_model_id": job["data"]["_id"]},
                headers={"x-api-key": key},
                timeout=30,
            ).json()["data"]
            if record["image_status"] in (3, 4):
                break
            assert time.monotonic() < deadline, f"waited 180 s for the job to end: {record}"
            time.sleep(0.1)
        assert record["image_status"] == 3, record
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=120)


# --- the page's menu, in Chromium ---------------------------------------------------------

CHROMIUM = __import__("shutil").which("chromium") or __import__("shutil").which("chromium-browser")


@pytest.fixture(scope="module")
def mapped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("examples"), CONFIG, "--source-map", str(SOURCE_MAP_FILE))
    yield running
    running.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_pages_menu_loads_an_example_and_renders_it_at_once(mapped_server: Server) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from tests.test_page import FLAGS

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 900})
        tab.goto(mapped_server.base + "/")
        tab.wait_for_function("document.querySelectorAll('#example option').length === 5")
        tab.select_option("#example", "example-1-template-only")
        tab.wait_for_function("Number(document.getElementById('preview').dataset.count || 0) > 0")
        tab.wait_for_function("document.getElementById('preview').naturalWidth > 0")
        assert json.loads(tab.text_content("#body_json")) == json.loads(DOCUMENTED["example-1-template-only"])
        assert tab.input_value("#overlay_origin_y") == "849"
        # The layers' own pictures come through the mirror's map, not as broken images.
        tab.wait_for_function("document.getElementById('origin_ghost').naturalWidth > 0")
        assert tab.evaluate("document.getElementById('template_ghost').naturalWidth") > 0
        assert "1108" not in (tab.text_content("#summary") or "")
        browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_the_docs_page_works_with_the_network_blocked(mapped_server: Server) -> None:
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from tests.test_page import FLAGS

    outside: list[str] = []

    def only_the_mirror(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if url.startswith(mapped_server.base):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(url)
            route.abort()  # type: ignore[attr-defined]

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page()
        tab.route("**/*", only_the_mirror)
        tab.goto(mapped_server.base + "/docs")
        tab.wait_for_selector(".swagger-ui .info .title", timeout=20000)
        assert "compositor mirror" in tab.text_content(".swagger-ui .info .title")
        assert tab.locator(".opblock").count() >= 3  # the three upstream operations
        browser.close()
    assert outside == []


def test_the_removebg_pages_photograph_renders_as_written(tmp_path: Path) -> None:
    readme = (REPO / "docs" / "removebg.md").read_text()
    assert "](removebg.png)" in readme and (REPO / "docs" / "removebg.png").is_file()
    assert "MIT" in (REPO / "fixtures" / "images" / "ANIMAL-2-LICENSE.md").read_text()
    command = next(line for line in readme.splitlines() if "render fixtures/requests/removebg-photo.json" in line)
    command = command.strip("`").replace(".venv/bin/compositor", f"{sys.executable} -m compositor.cli")
    command = command.replace("-o out.png", f"-o {tmp_path / 'out.png'}")
    done = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    composite = Image.open(tmp_path / "out.png").convert("RGBA")
    # The photograph's sky is gone: the top of the foreground's box shows the template, not blue sky.
    r, g, b, _ = composite.getpixel((300, 130))
    assert not (b > 200 and r < 100), (r, g, b)
