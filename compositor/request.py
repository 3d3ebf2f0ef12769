"""Parsing and validation of a Background Change request body.

`validate` answers the way the API does (code 1003 and the field's name), but
it collects every problem at once, plus warnings for bodies that are legal yet
almost certainly not what their author meant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from compositor.errors import InvalidRequestError
from compositor.geometry import Size, clip_to_canvas, parse_offset, parse_size
from compositor.layout import CompositeRequest, Layer
from compositor.references import check_source_reference
from compositor.report import Problem, ValidationReport

_COLOR_PATTERN = re.compile(r"#[0-9a-fA-F]{6}")


@dataclass(frozen=True)
class BodyField:
    """One field of the request body: the single source for what validation
    requires and knows and for the mirror's OpenAPI schema of the body
    (`compositor.mirror.openapi`), so the two cannot drift apart."""

    name: str
    required: bool
    schema: dict[str, Any]  # JSON Schema of the value, as the schema publishes it
    description: str


_SIZE = {"type": "string", "pattern": "^[1-9][0-9]{0,8}x[1-9][0-9]{0,8}$"}
_URL = {"type": "string", "minLength": 1}

BODY_FIELDS: tuple[BodyField, ...] = (
    BodyField("canvas_size", True, _SIZE, 'The output size, "WxH".'),
    BodyField(
        "origin_img", True, _URL, "The foreground image: a URL (or, on the mirror, a data: URI or a mapped path)."
    ),
    BodyField("modify_origin_img_size", True, _SIZE, 'The foreground\'s size after scaling, "WxH".'),
    BodyField(
        "overlay_origin_x", True, {"type": "integer"}, "The foreground's left edge on the canvas (may be negative)."
    ),
    BodyField(
        "overlay_origin_y", True, {"type": "integer"}, "The foreground's top edge on the canvas (may be negative)."
    ),
    BodyField("color_code", False, {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"}, 'Background colour, "#rrggbb".'),
    BodyField("template_url", False, _URL, "The background image."),
    BodyField("modify_template_size", False, _SIZE, "The template's size after scaling (with template_url only)."),
    BodyField(
        "overlay_template_x",
        False,
        {"type": "integer"},
        "The template's left edge (with template_url only; 0 by default).",
    ),
    BodyField(
        "overlay_template_y",
        False,
        {"type": "integer"},
        "The template's top edge (with template_url only; 0 by default).",
    ),
    BodyField(
        "removeBg", False, {"type": "boolean", "default": False}, "Remove the foreground's own background first."
    ),
    BodyField(
        "webhookUrl",
        False,
        {"type": "string", "pattern": "^https?://"},
        "Called on every status change. Marked required by the upstream docs, whose examples omit it:"
        " the mirror accepts a body without it.",
    ),
)
REQUIRED_FIELDS = tuple(spec.name for spec in BODY_FIELDS if spec.required)
TEMPLATE_ONLY_FIELDS = ("modify_template_size", "overlay_template_x", "overlay_template_y")
KNOWN_FIELDS = frozenset(spec.name for spec in BODY_FIELDS)
_REQUIRED = {spec.name: spec.required for spec in BODY_FIELDS}


@dataclass(frozen=True)
class Limits:
    """Bounds checked before anything is allocated. The defaults admit every
    documented example (3840x3840) with room to spare and refuse sizes whose
    canvas alone would not fit in memory."""

    max_canvas_side: int = 16384
    max_canvas_pixels: int = 8192 * 8192  # 256 MiB as RGBA
    max_layer_side: int = 32768
    max_offset: int = 1_000_000


def validate(body: object, *, strict: bool = False, limits: Limits | None = None) -> ValidationReport:
    """Check a request body statically (no network, no decoding).

    `strict` also reports what the upstream docs mark required although their
    own examples omit it (`webhookUrl`), and turns every warning into an error.
    """
    return _Validator(limits or Limits()).run(body, strict=strict)


def parse_request(body: object, *, limits: Limits | None = None) -> CompositeRequest:
    """The validated request, or `InvalidRequestError` carrying the report."""
    report = validate(body, limits=limits)
    if report.request is None:
        raise InvalidRequestError(report)
    return report.request


class _Validator:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.report = ValidationReport()

    def error(self, name: str, message: str) -> None:
        self.report.errors.append(Problem(name, message))

    def warn(self, name: str, message: str) -> None:
        self.report.warnings.append(Problem(name, message))

    def run(self, body: object, *, strict: bool) -> ValidationReport:
        if not isinstance(body, dict):
            self.error("body", "must be a JSON object")
            return self.report
        if _depth(body) > MAX_BODY_DEPTH:
            self.error("body", f"is nested more than {MAX_BODY_DEPTH} levels deep")
            return self.report

        canvas = self.size(body, "canvas_size", required=_REQUIRED["canvas_size"], kind="canvas")
        fg_source = self.source(body, "origin_img", required=_REQUIRED["origin_img"])
        fg_size = self.size(body, "modify_origin_img_size", required=_REQUIRED["modify_origin_img_size"], kind="layer")
        fg_x = self.offset(body, "overlay_origin_x", required=_REQUIRED["overlay_origin_x"])
        fg_y = self.offset(body, "overlay_origin_y", required=_REQUIRED["overlay_origin_y"])
        color = self.color(body)
        template_source = self.source(body, "template_url", required=_REQUIRED["template_url"])
        remove_bg = self.boolean(body, "removeBg")
        webhook = self.webhook(body, strict=strict)

        template: Layer | None = None
        if template_source is None:
            for name in TEMPLATE_ONLY_FIELDS:
                if not _is_blank(body.get(name)):
                    self.warn(name, "is ignored without template_url")
        else:
            t_size = self.size(body, "modify_template_size", required=False, kind="layer")
            t_x = self.offset(body, "overlay_template_x", required=False)
            t_y = self.offset(body, "overlay_template_y", required=False)
            if t_x is not None and t_y is not None:
                template = Layer(template_source, t_size, t_x, t_y)
                if canvas is not None:
                    self.warn_off_canvas(canvas, template, "overlay_template")

        for name in body:
            if name not in KNOWN_FIELDS:
                self.warn(str(name), "is not a field of this API and is ignored")

        foreground = None
        if fg_source is not None and fg_size is not None and fg_x is not None and fg_y is not None:
            foreground = Layer(fg_source, fg_size, fg_x, fg_y)
            if canvas is not None:
                self.warn_off_canvas(canvas, foreground, "overlay_origin")

        if strict:
            self.report.errors.extend(self.report.warnings)
            self.report.warnings = []

        if self.report.ok:
            assert canvas is not None and foreground is not None and remove_bg is not None
            self.report.request = CompositeRequest(canvas, color, template, foreground, remove_bg, webhook)
        return self.report

    def present(self, body: dict[str, Any], name: str, required: bool) -> bool:
        value = body.get(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return False
        if isinstance(value, str) and value == "":
            if required:
                self.error(name, "can not be empty")
            return False
        return True

    def size(self, body: dict[str, Any], name: str, *, required: bool, kind: str) -> Size | None:
        if not self.present(body, name, required):
            return None
        try:
            size = parse_size(body[name])
        except ValueError as exc:
            self.error(name, str(exc))
            return None
        limits = self.limits
        if kind == "canvas":
            if max(size.width, size.height) > limits.max_canvas_side:
                self.error(name, f"{size} exceeds the largest side allowed, {limits.max_canvas_side}")
                return None
            if size.pixels > limits.max_canvas_pixels:
                self.error(name, f"{size} exceeds the canvas limit of {limits.max_canvas_pixels} pixels")
                return None
        elif max(size.width, size.height) > limits.max_layer_side:
            self.error(name, f"{size} exceeds the largest layer side allowed, {limits.max_layer_side}")
            return None
        return size

    def offset(self, body: dict[str, Any], name: str, *, required: bool) -> int | None:
        if body.get(name) is None:
            if required:
                self.error(name, "is required")
                return None
            return 0
        try:
            value = parse_offset(body[name])
        except ValueError as exc:
            self.error(name, str(exc))
            return None
        if abs(value) > self.limits.max_offset:
            self.error(name, f"{value} is beyond the offset limit of ±{self.limits.max_offset}")
            return None
        return value

    def source(self, body: dict[str, Any], name: str, *, required: bool) -> str | None:
        if not self.present(body, name, required):
            return None
        value = body[name]
        if not isinstance(value, str):
            self.error(name, "must be a string (a URL, a data: URI or a path)")
            return None
        problem = check_source_reference(value)
        if problem is not None:
            self.error(name, problem)
            return None
        return value

    def color(self, body: dict[str, Any]) -> tuple[int, int, int] | None:
        if not self.present(body, "color_code", required=False):
            return None
        value = body["color_code"]
        if not isinstance(value, str) or _COLOR_PATTERN.fullmatch(value) is None:
            self.error("color_code", f'must be "#rrggbb" in hexadecimal (e.g. "#aafbe3"), got {value!r}')
            return None
        return (int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16))

    def boolean(self, body: dict[str, Any], name: str) -> bool | None:
        value = body.get(name)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.error(name, f"must be true or false, got {value!r}")
            return None
        return value

    def webhook(self, body: dict[str, Any], *, strict: bool) -> str | None:
        value = body.get("webhookUrl")
        if _is_blank(value):
            if strict:
                self.warn("webhookUrl", "is marked required by the upstream docs (their examples omit it)")
            return None
        if not isinstance(value, str) or re.match(r"https?://[^/\s]+", value) is None:
            self.error("webhookUrl", f"must be an http(s) URL, got {value!r}"[:300])
            return None
        problem = check_source_reference(value)
        if problem is not None:
            self.error("webhookUrl", problem)
            return None
        return value

    def warn_off_canvas(self, canvas: Size, layer: Layer, prefix: str) -> None:
        axis = None
        if layer.x >= canvas.width:
            axis = "x"
        elif layer.y >= canvas.height:
            axis = "y"
        elif layer.size is not None and clip_to_canvas(canvas, layer.size, layer.x, layer.y) is None:
            axis = "x" if layer.x + layer.size.width <= 0 or layer.x >= canvas.width else "y"
        if axis is not None:
            what = "template" if prefix == "overlay_template" else "foreground"
            self.warn(f"{prefix}_{axis}", f"places the {what} wholly outside the {canvas} canvas")


# A body is flat: a few levels of nesting in unknown fields are tolerated
# (and warned about); hundreds are an attack on whoever parses or copies it.
MAX_BODY_DEPTH = 32


def _depth(value: object) -> int:
    """How deeply `value` nests lists and objects, counted without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, level)
            if level > MAX_BODY_DEPTH:
                return level
            stack.extend((child, level + 1) for child in item)
    return deepest


def _is_blank(value: object) -> bool:
    return value is None or value == ""
