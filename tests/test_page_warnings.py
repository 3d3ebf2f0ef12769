"""Pre-flight's warnings on the preview page (issue 22): once the engine has
passed a body, the page asks `/preview/preflight`, which reads the sources'
headers on the preview worker as a job would, and shows each warning beside
the field it names (amber, and "warning" in words), a source that cannot be
read as 1108 beside its source field. The verdict itself (`/preview/validate`)
reads no source. Each case is checked twice: over plain HTTP (no browser) and
in Chromium, against the development-mode mirror of the verdict tests (its
source map sends the documented CDN URLs to the checkout's fixtures)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import IMAGES
from tests.test_mirror import Server
from tests.test_page import CHROMIUM, body_of
from tests.test_page_verdicts import FOREGROUND, TEMPLATE, load, server, tab, verdict  # noqa: F401

browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")

# The fixtures: the template is a 1200x1336 JPEG (opaque), the foreground a 960x1200 RGBA PNG.
CLEAN: dict[str, Any] = {
    "canvas_size": "400x300",
    "color_code": "#aafbe3",
    "template_url": TEMPLATE,
    "modify_template_size": "300x334",  # a quarter of the picture: its own proportions
    "overlay_template_x": 0,
    "overlay_template_y": 0,
    "origin_img": FOREGROUND,
    "modify_origin_img_size": "200x250",
    "overlay_origin_x": 10,
    "overlay_origin_y": 20,
}
STRETCHED = {**CLEAN, "modify_origin_img_size": "200x150"}
STRETCH = "stretches 960x1200 to 200x150"
# No color_code: the template covers x 0-300 only, the strip right of it stays transparent.
TRANSPARENT = {key: value for key, value in CLEAN.items() if key != "color_code"}
TRANSPARENCY = "25% of the canvas stays transparent (within x 300-400, y 0-300)"
# A local file under the fixtures that is not there (never a host beyond loopback), and a stretched template.
UNREADABLE = {**CLEAN, "origin_img": str(IMAGES / "no-such-picture.png"), "modify_template_size": "400x300"}
MISSING = "names a local file that does not exist"


def preflight_answer(server: Server, body: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    answer = httpx.post(server.base + "/preview/preflight", json={"body": body}, timeout=60)
    assert answer.status_code == 200
    envelope: dict[str, Any] = answer.json()
    return envelope


def by_field(problems: list[dict[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for problem in problems:
        found.setdefault(problem["field"], []).append(problem["message"])
    return found


# --- over HTTP ----------------------------------------------------------------------


def test_a_stretched_size_is_warned_on_its_field_and_fixing_it_clears_it(server: Server) -> None:  # noqa: F811
    envelope = preflight_answer(server, STRETCHED)
    assert envelope["code"] == 1000 and envelope["data"]["errors"] == []
    warned = by_field(envelope["data"]["warnings"])
    assert list(warned) == ["modify_origin_img_size"]
    assert any(message.startswith(STRETCH) for message in warned["modify_origin_img_size"])
    fixed = preflight_answer(server, CLEAN)
    assert fixed["code"] == 1000 and fixed["data"] == {"errors": [], "warnings": []}


def test_a_canvas_left_transparent_is_warned_on_color_code(server: Server) -> None:  # noqa: F811
    envelope = preflight_answer(server, TRANSPARENT)
    assert envelope["code"] == 1000
    warned = by_field(envelope["data"]["warnings"])
    assert list(warned) == ["color_code"] and warned["color_code"][0].startswith(TRANSPARENCY)


def test_an_unreadable_source_is_1108_on_its_field(server: Server) -> None:  # noqa: F811
    envelope = preflight_answer(server, UNREADABLE)
    assert envelope["code"] == 1108
    assert by_field(envelope["data"]["errors"]) == {"origin_img": [MISSING]}
    assert list(by_field(envelope["data"]["warnings"])) == ["modify_template_size"]  # the readable one still warns


def test_the_verdict_reads_no_source_and_an_invalid_body_is_not_read(server: Server) -> None:  # noqa: F811
    verdict_answer = httpx.post(server.base + "/preview/validate", json={"body": UNREADABLE}, timeout=60).json()
    assert verdict_answer["code"] == 1000 and verdict_answer["data"] == {"errors": [], "warnings": []}
    invalid = {**UNREADABLE, "canvas_size": "0x300"}
    envelope = preflight_answer(server, invalid)
    assert envelope["code"] == 1003 and "origin_img" not in by_field(envelope["data"]["errors"])
    assert envelope == httpx.post(server.base + "/preview/validate", json={"body": invalid}, timeout=60).json()


# --- in Chromium ----------------------------------------------------------------------


def preflighted(tab: Any) -> None:  # noqa: F811
    """Once pre-flight's answer for the body now shown is drawn (never an earlier body's)."""
    tab.wait_for_function(
        "document.getElementById('summary').dataset.preflighted === document.getElementById('body_json').textContent"
    )


def shown(tab: Any, kind: str, field: str | None = None) -> list[str]:  # noqa: F811
    """The `kind` ("error" or "warning") lines beside `field`, or beside any field."""
    where = f'.msg[data-for="{field}"]' if field else ".msg"
    lines: list[str] = tab.eval_on_selector_all(f"{where} .problem.{kind}", "els => els.map((e) => e.textContent)")
    return lines


@browser
def test_the_page_shows_a_stretch_beside_the_size_and_clears_it_when_fixed(tab: Any) -> None:  # noqa: F811
    load(tab, STRETCHED)
    preflighted(tab)
    assert verdict(tab) == "valid (1000)"  # a warning never fails the verdict
    lines = shown(tab, "warning", "modify_origin_img_size")
    assert any(line.startswith(f"warning: modify_origin_img_size {STRETCH}") for line in lines), lines
    assert shown(tab, "warning") == lines and shown(tab, "error") == []
    assert body_of(tab) == STRETCHED  # the page shows the warning, and rewrites nothing
    tab.fill("#origin_h", "250")
    preflighted(tab)
    assert body_of(tab) == CLEAN
    assert shown(tab, "warning") == []


@browser
def test_the_page_shows_a_transparent_canvas_beside_color_code(tab: Any) -> None:  # noqa: F811
    load(tab, TRANSPARENT)
    preflighted(tab)
    lines = shown(tab, "warning", "color_code")
    assert len(lines) == 1 and lines[0].startswith(f"warning: color_code {TRANSPARENCY}")
    assert shown(tab, "warning") == lines
    assert body_of(tab) == TRANSPARENT


@browser
def test_the_page_shows_no_warning_for_a_clean_body(tab: Any) -> None:  # noqa: F811
    load(tab, STRETCHED)  # one first, so a stale one would show
    preflighted(tab)
    assert shown(tab, "warning")
    load(tab, CLEAN)
    preflighted(tab)
    assert verdict(tab) == "valid (1000)"
    assert shown(tab, "warning") == [] and shown(tab, "error") == []


@browser
def test_the_page_shows_an_unreadable_source_as_1108_beside_it(tab: Any) -> None:  # noqa: F811
    load(tab, UNREADABLE)
    preflighted(tab)
    assert shown(tab, "error", "origin_img") == [f"1108: origin_img {MISSING} "]
    assert "1108" in str(tab.text_content("#summary"))
    # The template's stretch beside its size, styled apart from the error: another colour, and said in words.
    warned = tab.locator('.msg[data-for="modify_template_size"] .problem.warning')
    assert str(warned.text_content()).startswith("warning: modify_template_size stretches")
    failed = tab.locator('.msg[data-for="origin_img"] .problem.error')
    colour = "(el) => getComputedStyle(el).color + ' ' + getComputedStyle(el).backgroundColor"
    assert warned.evaluate(colour) != failed.evaluate(colour)
    assert body_of(tab) == UNREADABLE
