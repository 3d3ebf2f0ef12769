from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compositor.errors import InvalidRequestError
from compositor.request import KNOWN_FIELDS, REQUIRED_FIELDS, Limits, parse_request, validate
from tests.conftest import load_request, minimal_body


def fields(problems: list[Any]) -> list[str]:
    return [p.field for p in problems]


@pytest.mark.parametrize(
    "name", ["example-1-template-only", "example-2-color-only", "example-3-template-and-color", "example-4-neither"]
)
def test_every_documented_example_is_valid_without_warnings(name: str) -> None:
    report = validate(load_request(name))
    assert report.ok, report.errors
    assert report.warnings == []
    assert report.envelope()["code"] == 1000


def test_example_3_keeps_its_off_canvas_offsets() -> None:
    request = parse_request(load_request("example-3-template-and-color"))
    assert (request.foreground.x, request.foreground.y) == (-72, -84)
    assert request.template is not None and request.template.x == 2049


@pytest.mark.parametrize("name", REQUIRED_FIELDS)
def test_a_missing_required_field_is_named(name: str) -> None:
    report = validate(minimal_body(**{name: ...}))
    assert report.code == 1003
    assert fields(report.errors) == [name]
    assert "required" in report.errors[0].message


@pytest.mark.parametrize("name", ["canvas_size", "origin_img", "modify_origin_img_size"])
def test_an_empty_required_string_can_not_be_empty(name: str) -> None:
    report = validate(minimal_body(**{name: ""}))
    assert fields(report.errors) == [name]
    assert "can not be empty" in report.errors[0].message


def test_all_errors_are_collected_not_just_the_first() -> None:
    report = validate({"canvas_size": "big", "color_code": "red", "overlay_origin_x": "3", "removeBg": "yes"})
    assert set(fields(report.errors)) == {
        "canvas_size",
        "origin_img",
        "modify_origin_img_size",
        "overlay_origin_x",
        "overlay_origin_y",
        "color_code",
        "removeBg",
    }
    assert report.message.startswith("canvas_size: ") and "(and 6 more)" in report.message


@pytest.mark.parametrize("body", [[], "body", 3, None])
def test_a_body_that_is_not_an_object_is_refused(body: object) -> None:
    assert fields(validate(body).errors) == ["body"]


@pytest.mark.parametrize("colour", ["#aafbe3", "#AAFBE3", "#000000"])
def test_colour_codes_are_six_hex_digits(colour: str) -> None:
    request = validate(minimal_body(color_code=colour)).request
    assert request is not None and request.color == (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:], 16))


@pytest.mark.parametrize("colour", ["aafbe3", "#abc", "#aafbe3ff", "#gggggg", "rgb(1,2,3)", 123])
def test_other_colour_notations_are_refused(colour: object) -> None:
    assert fields(validate(minimal_body(color_code=colour)).errors) == ["color_code"]


@pytest.mark.parametrize("value", [None, ""])
def test_an_absent_or_empty_colour_means_no_fill(value: object) -> None:
    request = validate(minimal_body(color_code=value)).request
    assert request is not None and request.color is None


def test_template_fields_default_to_natural_size_at_the_origin() -> None:
    request = parse_request(minimal_body(template_url="t.jpg"))
    assert request.template is not None
    assert (request.template.size, request.template.x, request.template.y) == (None, 0, 0)


@pytest.mark.parametrize("name", ["modify_template_size", "overlay_template_x", "overlay_template_y"])
def test_template_fields_without_a_template_are_ignored_with_a_warning(name: str) -> None:
    value = "10x10" if name == "modify_template_size" else 5
    report = validate(minimal_body(**{name: value}))
    assert report.ok
    assert fields(report.warnings) == [name]
    assert report.request is not None and report.request.template is None


def test_a_bad_template_size_is_an_error_when_there_is_a_template() -> None:
    assert fields(validate(minimal_body(template_url="t.jpg", modify_template_size="10*10")).errors) == [
        "modify_template_size"
    ]


OFF_CANVAS = [
    (64, 0, "overlay_origin_x"),
    (0, 48, "overlay_origin_y"),
    (-16, 0, "overlay_origin_x"),
    (0, -16, "overlay_origin_y"),
]


@pytest.mark.parametrize(("x", "y", "warned"), OFF_CANVAS)
def test_a_foreground_wholly_off_canvas_is_legal_but_warned(x: int, y: int, warned: str) -> None:
    report = validate(minimal_body(overlay_origin_x=x, overlay_origin_y=y))
    assert report.ok
    assert fields(report.warnings) == [warned]


def test_a_partly_off_canvas_foreground_is_not_warned() -> None:
    assert validate(minimal_body(overlay_origin_x=-15, overlay_origin_y=47)).warnings == []


def test_a_template_of_unknown_size_is_warned_only_when_surely_off_canvas() -> None:
    assert validate(minimal_body(template_url="t.jpg", overlay_template_x=-500)).warnings == []
    report = validate(minimal_body(template_url="t.jpg", overlay_template_x=64))
    assert fields(report.warnings) == ["overlay_template_x"]


def test_unknown_fields_are_warned() -> None:
    report = validate(minimal_body(colour_code="#ffffff"))
    assert report.ok and fields(report.warnings) == ["colour_code"]


def test_webhook_is_optional_but_strict_mode_reports_it() -> None:
    assert validate(minimal_body()).ok
    report = validate(minimal_body(), strict=True)
    assert not report.ok and fields(report.errors) == ["webhookUrl"]
    assert validate(minimal_body(webhookUrl="https://example.com/hook"), strict=True).ok


def test_strict_mode_turns_warnings_into_errors() -> None:
    report = validate(minimal_body(webhookUrl="http://h/x", overlay_origin_x=1000), strict=True)
    assert fields(report.errors) == ["overlay_origin_x"] and report.warnings == []


@pytest.mark.parametrize("value", ["ftp://h/x", "hook", 5])
def test_a_webhook_must_be_an_http_url(value: object) -> None:
    assert fields(validate(minimal_body(webhookUrl=value)).errors) == ["webhookUrl"]


@pytest.mark.parametrize("value", ["yes", 1, 0, "true"])
def test_remove_bg_must_be_a_boolean(value: object) -> None:
    assert fields(validate(minimal_body(removeBg=value)).errors) == ["removeBg"]


@pytest.mark.parametrize(
    "source",
    ["ftp://example.com/a.png", "https:///a.png", "data:image/png;base64", "javascript:alert(1)"],
)
def test_unusable_source_references_are_refused(source: str) -> None:
    assert fields(validate(minimal_body(origin_img=source)).errors) == ["origin_img"]


@pytest.mark.parametrize(
    "source", ["https://example.com/a.png", "http://127.0.0.1:8000/a", "file:///tmp/a.png", "a.png", "data:,x"]
)
def test_usable_source_references_pass(source: str) -> None:
    assert validate(minimal_body(origin_img=source)).ok


def test_absurd_canvas_sizes_are_refused_before_any_allocation() -> None:
    report = validate(minimal_body(canvas_size="100000x100000"))
    assert fields(report.errors) == ["canvas_size"]
    assert "16384" in report.errors[0].message


def test_canvas_pixel_limit_is_configurable() -> None:
    assert validate(minimal_body(canvas_size="3840x3840")).ok
    report = validate(minimal_body(canvas_size="3840x3840"), limits=Limits(max_canvas_pixels=1_000_000))
    assert fields(report.errors) == ["canvas_size"]


def test_layer_side_limit_applies_to_both_layers() -> None:
    body = minimal_body(modify_origin_img_size="40000x10", template_url="t.jpg", modify_template_size="10x40000")
    assert fields(validate(body).errors) == ["modify_origin_img_size", "modify_template_size"]


def test_offsets_beyond_the_limit_are_refused() -> None:
    assert fields(validate(minimal_body(overlay_origin_x=10**7)).errors) == ["overlay_origin_x"]


def test_parse_request_raises_with_the_whole_report() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_request({"canvas_size": "1x1"})
    assert caught.value.code == 1003
    assert len(caught.value.report.errors) == 4


def test_the_envelope_is_json_with_code_msg_and_data() -> None:
    envelope = json.loads(json.dumps(validate({"canvas_size": "bad"}).envelope()))
    assert envelope["code"] == 1003
    assert envelope["msg"].startswith("canvas_size")
    assert {"field", "message"} == set(envelope["data"]["errors"][0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_values = st.one_of(
    json_values,
    st.from_regex(r"[0-9]{1,6}x[0-9]{1,6}", fullmatch=True),
    st.from_regex(r"#[0-9a-fA-F]{6}", fullmatch=True),
    st.integers(-5000, 5000),
    st.sampled_from(["a.png", "https://h/x.png", "data:,x", "ftp://x", ""]),
)
bodies = st.dictionaries(st.sampled_from([*sorted(KNOWN_FIELDS), "extra"]), field_values, max_size=14)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_random_bodies_never_crash_and_every_failure_names_a_field(body: dict[str, Any]) -> None:
    report = validate(body)
    envelope = report.envelope()
    assert envelope["code"] in (1000, 1003)
    if report.ok:
        assert report.request is not None
    else:
        assert envelope["code"] == 1003
        assert all(p.field in KNOWN_FIELDS for p in report.errors)
        assert report.errors[0].field in envelope["msg"]


@given(body=json_values)
def test_any_json_value_gets_an_answer(body: object) -> None:
    assert validate(body).envelope()["code"] in (1000, 1003)
