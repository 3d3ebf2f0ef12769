"""Sizes, offsets and the clipping of a placed layer against the canvas.

Everything here is pure integer arithmetic so that validation can answer
"where does this layer land?" without decoding a single pixel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SIZE_PATTERN = re.compile(r"([1-9][0-9]{0,8})x([1-9][0-9]{0,8})")


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Rect:
    """A half-open rectangle [x0, x1) x [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def is_empty(self) -> bool:
        return self.x1 <= self.x0 or self.y1 <= self.y0


@dataclass(frozen=True)
class Placement:
    """The visible part of a layer: where it lands on the canvas (`canvas`)
    and which pixels of the scaled layer those are (`layer`). Both rectangles
    have the same width and height."""

    canvas: Rect
    layer: Rect
    layer_size: Size


def parse_size(text: object) -> Size:
    """Parse the API's `"WxH"` size: two positive decimal integers joined by a
    lowercase `x`, nothing else (no spaces, signs or leading zeros)."""
    if not isinstance(text, str):
        raise ValueError(f'must be a string "WxH", got {_json_type(text)}')
    match = _SIZE_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError(f'must be "WxH" with positive integers (e.g. "3840x3840"), got {text!r}')
    return Size(int(match.group(1)), int(match.group(2)))


def parse_offset(value: object) -> int:
    """Parse a signed pixel offset. JSON has one number type, so an integral
    float such as `12.0` is the integer 12; a fraction, a string or a boolean
    is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be an integer, got {_json_type(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"must be an integer, got {value!r}")
        return int(value)
    return value


def clip_to_canvas(canvas: Size, layer: Size, x: int, y: int) -> Placement | None:
    """Clip a `layer`-sized rectangle placed with its top-left at (x, y).

    Returns None when no pixel of the layer lands on the canvas.
    """
    visible = Rect(max(x, 0), max(y, 0), min(x + layer.width, canvas.width), min(y + layer.height, canvas.height))
    if visible.is_empty:
        return None
    return Placement(
        canvas=visible,
        layer=Rect(visible.x0 - x, visible.y0 - y, visible.x1 - x, visible.y1 - y),
        layer_size=layer,
    )


def clip_rows(placement: Placement, top: int, bottom: int) -> Placement | None:
    """The part of a placement that lands on canvas rows [top, bottom), still a
    placement of the same scaled layer; None if it has none there."""
    c, layer = placement.canvas, placement.layer
    y0, y1 = max(c.y0, top), min(c.y1, bottom)
    if y0 >= y1:
        return None
    return Placement(
        canvas=Rect(c.x0, y0, c.x1, y1),
        layer=Rect(layer.x0, layer.y0 + y0 - c.y0, layer.x1, layer.y0 + y1 - c.y0),
        layer_size=placement.layer_size,
    )


def split_rows(placement: Placement, rows: int) -> list[Placement]:
    """The placement cut at the canvas rows that are multiples of `rows`: the
    same cuts whatever the layer, so a render band by band (whose bands are
    those rows) resamples exactly the same strips."""
    first = placement.canvas.y0 // rows * rows
    strips = (clip_rows(placement, top, top + rows) for top in range(first, placement.canvas.y1, rows))
    return [strip for strip in strips if strip is not None]


def source_box(placement: Placement, source: Size) -> tuple[float, float, float, float]:
    """The region of the unscaled source that maps onto the visible part, in
    the float coordinates that `PIL.Image.resize(box=...)` takes."""
    sx = source.width / placement.layer_size.width
    sy = source.height / placement.layer_size.height
    r = placement.layer
    return (r.x0 * sx, r.y0 * sy, r.x1 * sx, r.y1 * sy)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
