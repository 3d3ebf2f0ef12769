"""Request body in, composite image out: the stages of SPEC.md in order."""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from compositor.geometry import Placement, Size, clip_to_canvas, split_rows
from compositor.raster import new_canvas, place, resize_visible, unpremultiply
from compositor.removebg import RemovalOptions, remove_background
from compositor.request import CompositeRequest, Layer, Limits, parse_request
from compositor.sources import SourcePolicy, load_image
from compositor.timings import StageTimings

# Rows per strip: enough strips to keep both cores busy, each large enough
# that the Lanczos margin re-read at its edges costs little.
_STRIP_ROWS = 384


@dataclass(frozen=True)
class RenderOptions:
    limits: Limits = field(default_factory=Limits)
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    removal: RemovalOptions = field(default_factory=RemovalOptions)


def render(
    body: object,
    *,
    options: RenderOptions | None = None,
    timings: StageTimings | None = None,
) -> Image.Image:
    """Render a request body (or a parsed `CompositeRequest`) to an RGBA image
    of exactly `canvas_size`.

    Raises `InvalidRequestError` (1003) for a bad body, `SourceError` for a
    source that cannot be fetched or decoded, `ModelUnavailableError` when
    `removeBg` needs a model that is not installed."""
    return Image.fromarray(render_array(body, options=options, timings=timings), "RGBA")


def render_array(
    body: object,
    *,
    options: RenderOptions | None = None,
    timings: StageTimings | None = None,
) -> np.ndarray:
    """As `render`, as an (height, width, 4) uint8 array of straight RGBA:
    what the encoder takes without another copy of the canvas."""
    options = options or RenderOptions()
    timings = timings if timings is not None else StageTimings()
    request = body if isinstance(body, CompositeRequest) else parse_request(body, limits=options.limits)

    # Two threads: Pillow releases the GIL while it decodes and resamples, so
    # the template and the foreground proceed on both cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        with timings.stage("decode"):
            foreground_job = pool.submit(load_image, request.foreground.source, "origin_img", options.sources)
            template = (
                load_image(request.template.source, "template_url", options.sources) if request.template else None
            )
            foreground = foreground_job.result()

        if request.remove_bg:
            with timings.stage("remove_bg"):
                foreground = remove_background(foreground, options.removal)

        layers = []
        if template is not None and request.template is not None:
            layers.append((template, _placement(request.canvas, request.template, template)))
        layers.append((foreground, _placement(request.canvas, request.foreground, foreground)))
        del template, foreground  # the sources die with their last strip

        with timings.stage("canvas"):
            canvas = new_canvas(request.canvas, request.color)

        # Strips of each visible layer are resized on both cores and placed
        # in order as they arrive: the layers stay in order, blending overlaps
        # resizing, and no full-size resized layer ever exists.
        strips = [
            (image, strip)
            for image, placement in layers
            if placement is not None
            for strip in split_rows(placement, _STRIP_ROWS)
        ]
        del layers
        started = time.perf_counter()
        blending = 0.0
        pending = deque((pool.submit(resize_visible, image, strip), strip) for image, strip in strips)
        del strips
        while pending:
            job, strip = pending.popleft()
            region = job.result()
            start = time.perf_counter()
            place(canvas, region, strip)
            blending += time.perf_counter() - start
            del job, region
        timings.seconds["resize"] = time.perf_counter() - started - blending
        timings.seconds["blend"] = blending

    with timings.stage("finish"):
        return unpremultiply(canvas, opaque=request.color is not None)


def _placement(canvas: Size, layer: Layer, image: Image.Image) -> Placement | None:
    size = layer.size or Size(*image.size)
    return clip_to_canvas(canvas, size, layer.x, layer.y)
