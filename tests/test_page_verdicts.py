"""The preview page's verdicts are the engine's (issue 19): what is typed is
kept, as typed, in the body it shows, and the verdict beside it is
`compositor.validate`'s on that very body. One Chromium tab, shared by the
module, against a development-mode mirror (no client configured: the one
`make serve` starts, with the fixtures' source map)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from compositor import validate
from compositor.mirror.config import key_header_file
from tests.conftest import IMAGES
from tests.test_mirror import Server, start_server
from tests.test_page import CHROMIUM, FLAGS, body_of, playwright

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")

TEMPLATE = "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png"  # mapped to the fixtures
FOREGROUND = "https://drz0f01yeq1cx.cloudfront.net/1711939252580-7e40bd1a-e480-42ed-8585-3f9ffccf6bdb-5822.png"
BASE: dict[str, Any] = {
    "canvas_size": "400x300",
    "template_url": TEMPLATE,
    "modify_template_size": "400x300",
    "overlay_template_x": 0,
    "overlay_template_y": 0,
    "origin_img": FOREGROUND,
    "modify_origin_img_size": "200x150",
    "overlay_origin_x": 10,
    "overlay_origin_y": 20,
}
# Each numeric input, and the body's key it writes (a size's side: 0 width, 1 height).
SIZES = {
    "canvas_w": ("canvas_size", 0),
    "canvas_h": ("canvas_size", 1),
    "origin_w": ("modify_origin_img_size", 0),
    "origin_h": ("modify_origin_img_size", 1),
    "template_w": ("modify_template_size", 0),
    "template_h": ("modify_template_size", 1),
}
OFFSETS = ["overlay_origin_x", "overlay_origin_y", "overlay_template_x", "overlay_template_y"]
TYPED = {"zero": "0", "negative": "-5", "fractional": "1.5", "empty": "", "non-numeric": "abc", "over-limit": "2000000"}
JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("verdicts"), "")  # no client: development mode
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tab(server: Server) -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(server.base + "/")
        yield page
        browser.close()


def load(tab: Any, body: dict[str, Any]) -> None:
    tab.fill("#paste", json.dumps(body))
    tab.click("#load_body")
    assert body_of(tab) == body


def verdict(tab: Any) -> str:
    """The summary, once it judges the body now shown (never an earlier one's)."""
    tab.wait_for_function(
        "document.getElementById('summary').dataset.judged === document.getElementById('body_json').textContent"
    )
    return str(tab.text_content("#summary"))


def expected_body(field: str, typed: str) -> tuple[str, dict[str, Any]]:
    """The body key the field writes, and the body holding the typed text as typed."""
    body = dict(BASE)
    if field in SIZES:
        key, side = SIZES[field]
        parts = str(body[key]).split("x")
        parts[side] = typed
        body[key] = "x".join(parts)
    else:
        key = field
        if typed == "":
            del body[key]  # an empty field is an omitted key: required ones are refused for it
        else:
            body[key] = json.loads(typed) if JSON_NUMBER.fullmatch(typed) else typed
    return key, body


@pytest.mark.parametrize("typed", list(TYPED.values()), ids=list(TYPED))
@pytest.mark.parametrize("field", [*SIZES, *OFFSETS])
def test_a_typed_value_is_kept_and_judged_as_the_engine_judges_it(tab: Any, field: str, typed: str) -> None:
    load(tab, BASE)
    tab.fill(f"#{field}", typed)
    key, expected = expected_body(field, typed)
    assert body_of(tab) == expected  # shown at once, as typed
    summary = tab.locator("#summary")
    # Until the engine has judged this body, the page approves nothing.
    assert not str(summary.text_content()).startswith("valid") or summary.get_attribute(
        "data-judged"
    ) == tab.text_content("#body_json")
    shown = verdict(tab)
    assert body_of(tab) == expected and tab.input_value(f"#{field}") == typed
    report = validate(expected)
    beside = str(tab.text_content(f'.msg[data-for="{key}"]'))
    if report.ok:
        assert shown == "valid (1000)" and "1003" not in beside
        return
    assert shown.startswith("invalid (1003)")
    mine = [error for error in report.errors if error.field == key]
    assert mine, report.errors  # the engine refuses this field: its message stands beside it
    for error in mine:
        assert f"1003: {key} {error.message}" in beside


def test_the_users_examples_are_refused_as_upstream_refuses_them(tab: Any) -> None:
    load(tab, BASE)
    tab.fill("#canvas_w", "0")
    assert verdict(tab).startswith("invalid (1003)")
    assert body_of(tab)["canvas_size"] == "0x300"
    tab.fill("#canvas_w", "400")
    tab.fill("#overlay_origin_x", "1.5")
    assert verdict(tab).startswith("invalid (1003)")
    assert body_of(tab)["overlay_origin_x"] == 1.5
    assert "must be an integer, got 1.5" in str(tab.text_content('.msg[data-for="overlay_origin_x"]'))


def test_a_pasted_value_the_api_refuses_is_not_dropped(tab: Any) -> None:
    body = {**BASE, "overlay_template_x": "", "color_code": " #aafbe3"}
    load(tab, body)
    tab.fill("#overlay_origin_y", "21")  # an edit elsewhere rewrites nothing else
    assert verdict(tab).startswith("invalid (1003)")
    assert body_of(tab) == {**body, "overlay_origin_y": 21}
    assert "1003: overlay_template_x" in str(tab.text_content('.msg[data-for="overlay_template_x"]'))


def test_the_curl_lines_name_the_key_file_never_the_key(tab: Any, server: Server) -> None:
    header = key_header_file(server.data_dir).resolve()
    secret = header.read_text().split(":", 1)[1].strip()
    load(tab, BASE)
    commands = [line for id in ("#curl_mirror", "#curl_upstream") for line in str(tab.text_content(id)).splitlines()]
    mirror_line, upstream_line = (line for line in commands if line.startswith("curl "))
    assert f"-H @{header} " in mirror_line
    assert "-H @" in upstream_line and "x-api-key" not in upstream_line + mirror_line
    assert secret not in str(tab.content())


def test_an_upload_in_the_body_is_said_to_be_out_of_upstreams_reach(tab: Any) -> None:
    load(tab, BASE)
    assert not tab.is_visible("#body_note")
    tab.set_input_files("#origin_file", str(IMAGES / "foreground.png"))
    tab.wait_for_function("document.getElementById('body_json').textContent.includes('/uploads/')")
    note = tab.locator("#body_note")
    note.wait_for(state="visible")
    assert "origin_img" in str(note.text_content()) and "upstream" in str(note.text_content())
    load(tab, BASE)
    note.wait_for(state="hidden")


def test_the_favicon_is_served(server: Server, tab: Any) -> None:
    answer = httpx.get(server.base + "/favicon.ico")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/")
    icon = tab.get_attribute('link[rel="icon"]', "href")
    assert httpx.get(server.base + icon).status_code == 200
