"""Pre-flight: warnings from the sources' headers, before anything is rendered.

`validate --sources` reads each source the way render does (the same
`SourcePolicy`: local roots, source map, byte and pixel limits) but only as
far as its header: format, pixel size (with the EXIF orientation applied),
and whether it has an alpha channel. No pixel is decoded. From that and the
request's geometry it warns, naming the field and the numbers, about:

1. a layer resized off its picture's aspect ratio by more than
   `PreflightThresholds.max_aspect_change` (2%), on `modify_origin_img_size` /
   `modify_template_size`;
2. a layer enlarged more than `max_enlargement` (2x) in width or height (the
   same fields);
3. canvas left transparent without `color_code` (on `color_code`). The rule,
   kept simple: each layer covers its placed rectangle clipped to the canvas;
   a source without an alpha channel (an opaque mode) covers it for sure, a
   source with one (or the foreground under removeBg, which gets a mask) may
   not. Canvas under no layer stays transparent; canvas under only layers
   that may not cover "may stay transparent". Both are given as a share of the
   canvas and the bounding box (x and y, half-open) of where they are;
4. a layer more than `max_cut_off` (50%) outside the canvas (on
   `overlay_*_x` when it loses width, else `overlay_*_y`), with the edges it
   crosses and the share of the layer lost. A layer wholly outside is already
   warned by `validate` itself and is not warned again;
5. removeBg on a foreground that already has an alpha channel (on `removeBg`).

A source that cannot be read (missing, not an image, over the limits,
unreachable) is an error on its field with the API's code 1108 (image
processing error); `envelope` gives a report with such errors that code, but
only when every error is a source error: any other error (1003, a parameter
error, including warnings that `--strict` made errors) wins, as the API
refuses a body's parameters before it looks at its images. The transparency
warning is left out when a source could not be read (its coverage is unknown).

Only a source's first bytes are read (`sources.read_prefix`): 64 KiB, then
twice as many each time Pillow cannot make out the header from them (a JPEG
whose EXIF or ICC blocks come before its frame header, a PNG with big chunks
before its pixels), up to the byte limit, which reads the whole source. An
http(s) source is asked for that range, and its answer (206, or a 200 that
ignores the range) is read no further: the connection is then closed. Only
a whole source is ever judged not to be an image; a prefix that Pillow cannot
read is only a reason to read more. A 9000x9000 source is judged in a few
MB beyond the interpreter's own.

Not yet: a WebP is read whole (Pillow's WebP reader wants all of it; the
RIFF header's size says how much that is); an eXIf chunk that a PNG stores
after its pixels is not seen (reading it would decode them; Pillow writes it
before them); a source whose length is not announced (an http answer sent in
chunks) is held to the byte limit only when the header needs all of it.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from PIL import Image

from compositor.codes import ApiCode
from compositor.errors import CompositorError, SourceError
from compositor.geometry import Rect, Size, clip_to_canvas
from compositor.layout import CompositeRequest, Layer
from compositor.report import Problem, ValidationReport
from compositor.sources import DECODE_FAILURES, IncompleteSource, SourcePolicy, open_image, read_prefix

_EXIF_ORIENTATION = 0x0112
_EPSILON = 1e-9  # 510/500 is 1.02 in exact arithmetic, not above it
_FIRST_PREFIX = 64 * 1024  # bytes: most headers are in far fewer


@dataclass(frozen=True)
class PreflightThresholds:
    """When pre-flight warns. Each is exceeded, not reached: exactly 2x is fine."""

    max_aspect_change: float = 0.02  # a layer 2% wider (or taller) for its height than its picture
    max_enlargement: float = 2.0  # a layer more than twice its picture's width or height
    max_cut_off: float = 0.5  # more than half of a layer's area outside the canvas


@dataclass(frozen=True)
class SourceHeader:
    """What a source's header says: its format, its size as displayed (EXIF
    orientation applied) and whether it has an alpha channel."""

    format: str
    width: int
    height: int
    has_alpha: bool
    mode: str = dataclasses.field(default="", compare=False)  # Pillow's, for messages

    @property
    def size(self) -> Size:
        return Size(self.width, self.height)


def read_header(ref: str, field: str, policy: SourcePolicy) -> SourceHeader:
    """The header of one source, read as render reads it (same policy, maps
    and limits); `SourceError` when it cannot be had. Only as much of the
    source is read as its header needs (see the module's docstring), and
    its pixels are never decoded."""
    size = _FIRST_PREFIX
    while True:
        data, complete, hidden = read_prefix(ref, field, policy, size)
        try:
            return _parse_header(data, field, policy.max_pixels, complete)
        except IncompleteSource:
            size = max(size * 2, _riff_size(data))
        except CompositorError:  # as render: from a private address that does not tell, one reason
            if hidden:
                raise SourceError(field, policy.unreachable) from None
            raise


def _riff_size(data: bytes) -> int:
    """A WebP's whole length (Pillow reads a WebP's header from all of it), else 0."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return 8 + int.from_bytes(data[4:8], "little")
    return 0


def _parse_header(data: bytes, field: str, max_pixels: int, complete: bool = True) -> SourceHeader:
    with open_image(data, field, max_pixels=max_pixels, complete=complete) as image:
        width, height = image.size
        try:
            orientation = _orientation(image)
        except DECODE_FAILURES:  # a damaged EXIF block: render would not turn it either
            orientation = None
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        mode = image.mode
        has_alpha = mode in ("RGBA", "LA", "La", "PA", "RGBa") or (
            mode in ("P", "L", "RGB") and "transparency" in image.info
        )
        return SourceHeader(image.format or "?", width, height, has_alpha, mode)


def _orientation(image: Image.Image) -> Any:
    # A PNG's getexif() loads the pixels to look for an eXIf chunk after them;
    # one before them (where Pillow writes it) is already in `info`.
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return image.getexif().get(_EXIF_ORIENTATION)


@dataclass(frozen=True)
class _Placed:
    name: str  # "template" or "foreground"
    source_field: str
    size_field: str
    offset_prefix: str
    layer: Layer
    header: SourceHeader
    may_be_transparent: bool

    @property
    def transparency(self) -> str:
        """What may show through this layer, in words."""
        if self.header.has_alpha:
            return f"{self.source_field}'s own transparency"
        return f"{self.source_field}'s removed background"

    @property
    def size(self) -> Size:
        return self.layer.size or self.header.size


def preflight(
    request: CompositeRequest, policy: SourcePolicy, thresholds: PreflightThresholds | None = None
) -> tuple[list[Problem], list[Problem]]:
    """(errors, warnings) for a valid request's sources: the errors are sources
    that cannot be read (code 1108), the warnings what the headers predict."""
    limits = thresholds or PreflightThresholds()
    errors: list[Problem] = []
    found: list[Problem] = []
    placed: list[_Placed] = []
    layers = [("template", "template_url", "modify_template_size", "overlay_template", request.template)]
    layers.append(("foreground", "origin_img", "modify_origin_img_size", "overlay_origin", request.foreground))
    for name, source_field, size_field, prefix, layer in layers:
        if layer is None:
            continue
        try:
            header = read_header(layer.source, source_field, policy)
        except SourceError as exc:
            errors.append(Problem(exc.field, exc.reason))
            continue
        transparent = header.has_alpha or (name == "foreground" and request.remove_bg)
        item = _Placed(name, source_field, size_field, prefix, layer, header, transparent)
        placed.append(item)
        found.extend(_resize_warnings(item, limits))
        found.extend(_cut_off_warnings(item, request.canvas, limits))
        if name == "foreground" and request.remove_bg and header.has_alpha:
            found.append(
                Problem(
                    "removeBg",
                    f"origin_img already has an alpha channel ({header.format}, {header.mode}):"
                    " the mask will be recomputed over its transparency",
                )
            )
    if request.color is None and not errors:
        found.extend(_transparency_warnings(request.canvas, placed))
    return errors, found


def _resize_warnings(item: _Placed, limits: PreflightThresholds) -> list[Problem]:
    if item.layer.size is None:  # the picture's natural size: neither stretched nor enlarged
        return []
    source, target = item.header.size, item.layer.size
    found = []
    ratio = (target.width * source.height) / (target.height * source.width)
    if max(ratio, 1 / ratio) - 1 > limits.max_aspect_change + _EPSILON:
        way = f"{ratio:.2f}x wider for its height" if ratio > 1 else f"{1 / ratio:.2f}x taller for its width"
        keep = Size(target.width, max(1, round(target.width * source.height / source.width)))
        found.append(
            Problem(
                item.size_field,
                f"stretches {source} to {target}: {way} than the picture ({keep} keeps its proportions)",
            )
        )
    sx, sy = target.width / source.width, target.height / source.height
    if max(sx, sy) > limits.max_enlargement + _EPSILON:
        factor = f"{sx:.2f}x" if f"{sx:.2f}" == f"{sy:.2f}" else f"{sx:.2f}x wide, {sy:.2f}x tall"
        found.append(Problem(item.size_field, f"enlarges {source} to {target} ({factor}): expect a soft image"))
    return found


def _cut_off_warnings(item: _Placed, canvas: Size, limits: PreflightThresholds) -> list[Problem]:
    size, x, y = item.size, item.layer.x, item.layer.y
    placement = clip_to_canvas(canvas, size, x, y)
    if placement is None:  # wholly outside: validate warns about that already
        return []
    lost = 1 - placement.canvas.width * placement.canvas.height / size.pixels
    if lost <= limits.max_cut_off + _EPSILON:
        return []
    edges = [
        edge
        for edge, crossed in (
            ("top", y < 0),
            ("right", x + size.width > canvas.width),
            ("bottom", y + size.height > canvas.height),
            ("left", x < 0),
        )
        if crossed
    ]
    where = edges[0] if len(edges) == 1 else ", ".join(edges[:-1]) + f" and {edges[-1]}"
    field = f"{item.offset_prefix}_{'x' if placement.canvas.width < size.width else 'y'}"
    plural = "edges" if len(edges) > 1 else "edge"
    message = f"cuts off {_percent(lost)}% of the {item.name} ({size}) at the {where} {plural} of the {canvas} canvas"
    return [Problem(field, message)]


def _transparency_warnings(canvas: Size, placed: list[_Placed]) -> list[Problem]:
    """Where the canvas stays (or may stay) transparent: the canvas cut into
    cells at every layer edge, each cell covered by an opaque layer, by layers
    with alpha only, or by none."""
    rects = []
    for item in placed:
        placement = clip_to_canvas(canvas, item.size, item.layer.x, item.layer.y)
        if placement is not None:
            rects.append((placement.canvas, item))
    xs = sorted({0, canvas.width, *(r.x0 for r, _ in rects), *(r.x1 for r, _ in rects)})
    ys = sorted({0, canvas.height, *(r.y0 for r, _ in rects), *(r.y1 for r, _ in rects)})
    bare: list[Rect] = []
    maybe: list[Rect] = []
    showing: list[str] = []
    for x0, x1 in itertools.pairwise(xs):
        for y0, y1 in itertools.pairwise(ys):
            over = [item for r, item in rects if r.x0 <= x0 and x1 <= r.x1 and r.y0 <= y0 and y1 <= r.y1]
            cell = Rect(x0, y0, x1, y1)
            if not over:
                bare.append(cell)
            elif all(item.may_be_transparent for item in over):
                maybe.append(cell)
                showing.extend(item.transparency for item in over if item.transparency not in showing)
    if not bare and not maybe:
        return []
    whole = canvas.pixels
    shows = " or ".join(showing)
    advice = "set color_code or cover it with the template"
    if bare:
        text = f"{_percent(_area(bare) / whole)}% of the canvas stays transparent ({_box(bare)})"
        if maybe:
            text += f", and up to {_percent(_area(maybe) / whole)}% more ({_box(maybe)}) where {shows} shows"
    else:
        text = (
            f"up to {_percent(_area(maybe) / whole)}% of the canvas may stay transparent ({_box(maybe)}),"
            f" where {shows} shows"
        )
    return [Problem("color_code", f"{text}: {advice}")]


def _area(cells: list[Rect]) -> int:
    return sum(cell.width * cell.height for cell in cells)


def _box(cells: list[Rect]) -> str:
    x0, y0 = min(c.x0 for c in cells), min(c.y0 for c in cells)
    x1, y1 = max(c.x1 for c in cells), max(c.y1 for c in cells)
    return f"within x {x0}-{x1}, y {y0}-{y1}"


def _percent(fraction: float) -> str:
    """Three significant digits, never rounded to 0 or 100 when it is neither."""
    value = fraction * 100
    if 0 < value < 0.1:
        return "<0.1"
    if 99.9 < value < 100:
        return ">99.9"
    return f"{value:.3g}"


def envelope(report: ValidationReport, source_errors: list[Problem]) -> dict[str, Any]:
    """The report's envelope, with code 1108 when its only errors are the sources' (see the module's docstring)."""
    result = report.envelope()
    if report.errors and all(problem in source_errors for problem in report.errors):
        result["code"] = int(ApiCode.IMAGE_PROCESSING_ERROR)
    return result
