"""The preview page, end to end in a real headless Chromium (Debian's, driven
by Playwright; `make test` installs it)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from tests.conftest import IMAGES, REQUESTS
from tests.test_mirror import CONFIG, Server, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]  # fmt: skip


STALE_KEY = "left-by-an-earlier-development-run"


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from compositor.mirror.config import key_header_file

    data_dir = tmp_path_factory.mktemp("page")
    # A development client's key file from an earlier run: this server has clients configured, not that one.
    key_header_file(data_dir).write_text(f"x-api-key: {STALE_KEY}\n")
    running = start_server(data_dir, CONFIG)
    yield running
    running.stop()


@pytest.fixture
def page(page_server: Server) -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1500, "height": 900})
        tab.goto(page_server.base + "/")
        yield tab
        browser.close()


def body_of(tab: object) -> dict[str, object]:
    return dict(json.loads(tab.text_content("#body_json")))  # type: ignore[attr-defined]


def previews(tab: object) -> int:
    return int(tab.get_attribute("#preview", "data-count") or 0)  # type: ignore[attr-defined]


def drag(tab: object, x: float, y: float, dx: float, dy: float) -> None:
    tab.mouse.move(x, y)  # type: ignore[attr-defined]
    tab.mouse.down()  # type: ignore[attr-defined]
    tab.mouse.move(x + dx, y + dy, steps=8)  # type: ignore[attr-defined]
    tab.mouse.up()  # type: ignore[attr-defined]


def pick_images(tab: object) -> None:
    tab.set_input_files("#template_file", str(IMAGES / "template.jpg"))  # type: ignore[attr-defined]
    tab.wait_for_function("document.getElementById('body_json').textContent.includes('template_url')")  # type: ignore[attr-defined]
    tab.set_input_files("#origin_file", str(IMAGES / "foreground.png"))  # type: ignore[attr-defined]
    tab.wait_for_function(  # type: ignore[attr-defined]
        "document.getElementById('body_json').textContent.split('/uploads/').length === 3"
        " && Number(document.getElementById('preview').dataset.count || 0) > 0"
    )


def test_dragging_a_layer_moves_its_offsets_by_the_dragged_canvas_pixels(page: object) -> None:
    pick_images(page)
    before = body_of(page)
    scale = float(page.get_attribute("#stage", "data-scale"))  # type: ignore[attr-defined]
    shown = previews(page)
    box = page.locator("#origin_box").bounding_box()  # type: ignore[attr-defined]
    drag(page, box["x"] + box["width"] / 3, box["y"] + box["height"] / 3, 120, 60)
    page.wait_for_function(f"Number(document.getElementById('preview').dataset.count || 0) > {shown}")  # type: ignore[attr-defined]
    after = body_of(page)
    assert abs(after["overlay_origin_x"] - (before["overlay_origin_x"] + 120 / scale)) <= 1  # type: ignore[operator]
    assert abs(after["overlay_origin_y"] - (before["overlay_origin_y"] + 60 / scale)) <= 1  # type: ignore[operator]
    assert page.input_value("#overlay_origin_x") == str(after["overlay_origin_x"])  # type: ignore[attr-defined]


def test_resizing_by_the_handle_keeps_the_aspect_ratio(page: object) -> None:
    pick_images(page)
    page.fill("#origin_w", "1000")  # type: ignore[attr-defined]
    page.fill("#origin_h", "500")  # type: ignore[attr-defined]
    handle = page.locator("#origin_box .handle").bounding_box()  # type: ignore[attr-defined]
    drag(page, handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2, 80, 10)
    width, height = (int(v) for v in str(body_of(page)["modify_origin_img_size"]).split("x"))
    assert width > 1000 and abs(width / height - 2.0) < 0.01


def test_a_pasted_documented_body_fills_the_fields(page: object) -> None:
    example = json.loads((REQUESTS / "example-3-template-and-color.json").read_text())
    page.fill("#paste", json.dumps(example))  # type: ignore[attr-defined]
    page.click("#load_body")  # type: ignore[attr-defined]
    assert page.input_value("#canvas_w") == "3840"  # type: ignore[attr-defined]
    assert page.input_value("#overlay_origin_x") == "-72"  # type: ignore[attr-defined]
    assert page.input_value("#overlay_template_x") == "2049"  # type: ignore[attr-defined]
    assert page.input_value("#color_code") == "#aafbe3"  # type: ignore[attr-defined]
    frame = page.locator("#frame").bounding_box()  # type: ignore[attr-defined]
    layer = page.locator("#origin_box").bounding_box()  # type: ignore[attr-defined]
    assert layer["x"] < frame["x"] and layer["y"] < frame["y"]  # shown outside the canvas frame too
    assert body_of(page) == example


def test_validation_messages_appear_beside_their_field(page: object) -> None:
    page.fill("#canvas_w", "100000")  # type: ignore[attr-defined]
    message = page.locator('.msg[data-for="canvas_size"]')  # type: ignore[attr-defined]
    message.wait_for()
    page.wait_for_function("document.querySelector('.msg[data-for=canvas_size]').textContent.includes('1003')")  # type: ignore[attr-defined]
    assert "16384" in message.text_content()
    assert "invalid (1003)" in page.text_content("#summary")  # type: ignore[attr-defined]


def test_the_copied_body_validates_and_renders_what_the_page_showed(page: object) -> None:
    import base64
    import io

    import numpy as np
    from PIL import Image

    from compositor import render, validate

    pick_images(page)
    body = body_of(page)
    assert validate(body).ok
    shown_url = page.evaluate(  # type: ignore[attr-defined]
        """() => { const img = document.getElementById('preview'), c = document.createElement('canvas');
                   c.width = img.naturalWidth; c.height = img.naturalHeight;
                   c.getContext('2d').drawImage(img, 0, 0); return c.toDataURL('image/png'); }"""
    )
    shown = Image.open(io.BytesIO(base64.b64decode(shown_url.split(",", 1)[1]))).convert("RGB")
    full = render(body)
    assert full.size == (3840, 3840) and shown.size == (1024, 1024)
    expected = full.convert("RGB").resize(shown.size, Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(shown).astype(int) - np.asarray(expected).astype(int))
    assert difference.mean() < 2.0  # the same picture, rendered small rather than rendered then shrunk


def test_no_broken_image_shows_before_the_first_render(page: object) -> None:
    assert page.evaluate("getComputedStyle(document.getElementById('preview')).visibility") == "hidden"  # type: ignore[attr-defined]


def test_copy_says_it_copied(page_server: Server) -> None:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context()
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page_server.base)
        tab = context.new_page()
        tab.goto(page_server.base + "/")
        tab.click("#copy_body")
        tab.wait_for_function("document.getElementById('copy_body').textContent === 'Copied'")
        assert json.loads(tab.evaluate("navigator.clipboard.readText()")) == body_of(tab)
        browser.close()


def test_an_800_pixel_window_keeps_room_for_the_picture(page_server: Server) -> None:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 800, "height": 900})
        tab.goto(page_server.base + "/")
        assert tab.locator("#stage").bounding_box()["width"] > 600
        browser.close()


def test_layers_past_the_canvas_are_shown_whole(page: object) -> None:
    example = json.loads((REQUESTS / "example-3-template-and-color.json").read_text())
    page.fill("#paste", json.dumps(example))  # type: ignore[attr-defined]
    page.click("#load_body")  # type: ignore[attr-defined]
    stage = page.locator("#stage").bounding_box()  # type: ignore[attr-defined]
    for box in ("#template_box", "#origin_box"):
        layer = page.locator(box).bounding_box()  # type: ignore[attr-defined]
        assert layer["x"] >= stage["x"] and layer["y"] >= stage["y"]
        assert layer["x"] + layer["width"] <= stage["x"] + stage["width"] + 1
        assert layer["y"] + layer["height"] <= stage["y"] + stage["height"] + 1


def test_a_picture_of_another_shape_keeps_the_width_and_takes_its_own_aspect(page: object, tmp_path: object) -> None:
    from pathlib import Path

    from PIL import Image

    pick_images(page)
    before = str(body_of(page)["modify_template_size"])
    wide = Path(str(tmp_path)) / "wide.png"
    Image.new("RGB", (400, 100), (10, 200, 30)).save(wide)
    page.set_input_files("#template_file", str(wide))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        f"!document.getElementById('body_json').textContent.includes('{before}')"
    )
    width, height = (int(v) for v in str(body_of(page)["modify_template_size"]).split("x"))
    assert width == int(before.split("x")[0]) and abs(width / height - 4.0) < 0.02


def test_the_curl_lines_with_configured_clients_name_a_key_file_to_write(page: object, page_server: Server) -> None:
    lines = [line for id in ("#curl_upstream", "#curl_mirror") for line in str(page.text_content(id)).splitlines()]  # type: ignore[attr-defined]
    upstream, mirror = (line for line in lines if line.startswith("curl "))
    assert "-H @akool-key.header " in upstream and "-H @mirror-key.header " in mirror
    assert "x-api-key" not in upstream + mirror
    assert "development-client.header" not in "\n".join(lines) and STALE_KEY not in page.content()  # type: ignore[attr-defined]
