"""Request body in, composite image out: the stages of SPEC.md in order."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from compositor.budget import MemoryBudget, canvas_bytes, removal_bytes
from compositor.geometry import Placement, Size, clip_rows, clip_to_canvas, split_rows
from compositor.raster import new_canvas, place, resize_visible, unpremultiply
from compositor.removebg import RemovalOptions, remove_background
from compositor.request import CompositeRequest, Layer, Limits, parse_request
from compositor.sources import SourcePolicy, load_image
from compositor.threads import render_threads
from compositor.timings import StageTimings

# Rows per strip: enough strips to keep both cores busy, each large enough
# that the Lanczos margin re-read at its edges costs little.
STRIP_ROWS = 384

# Bands a banded render resizes ahead of the one it is blending: enough to
# keep both cores busy, few enough that memory stays a few bands' worth.
_BANDS_AHEAD = 2


@dataclass(frozen=True)
class RenderOptions:
    limits: Limits = field(default_factory=Limits)
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    removal: RemovalOptions = field(default_factory=RemovalOptions)
    # Bytes one render may hold (see `compositor.budget`); None: no limit.
    memory_budget: int | None = None

    def new_budget(self, canvas: Size) -> MemoryBudget | None:
        """A fresh budget for one render, the canvas already reserved."""
        if self.memory_budget is None:
            return None
        budget = MemoryBudget(self.memory_budget)
        budget.reserve(canvas_bytes(canvas.width, canvas.height), "canvas_size")
        return budget


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
    budget = options.new_budget(request.canvas)

    # Two threads: Pillow releases the GIL while it decodes and resamples.
    # The foreground (the slower source, and removeBg's input) is prepared on
    # one while this thread decodes the template and hands its strips to the
    # other, so resizing starts before the last decode ends.
    with ThreadPoolExecutor(max_workers=render_threads(2)) as pool:
        foreground_job = pool.submit(_prepared_foreground, request, options, timings, budget)
        strips = _StripPlacer(pool, timings)
        if request.template is not None:
            template = _decoded_template(request.template, options, timings, budget)
            strips.submit(template, _placement(request.canvas, request.template, template))
            del template  # the source dies with its last strip
        with timings.stage("canvas"):
            canvas = new_canvas(request.canvas, request.color)
        while strips.pending and not foreground_job.done():
            wait([strips.pending[0][0], foreground_job], return_when=FIRST_COMPLETED)
            if strips.pending[0][0].done():
                strips.place_next(canvas)
        foreground = foreground_job.result()
        strips.submit(foreground, _placement(request.canvas, request.foreground, foreground))
        del foreground
        while strips.pending:
            strips.place_next(canvas)

    with timings.stage("finish"):
        return unpremultiply(canvas, opaque=request.color is not None)


def render_bands(
    body: object,
    *,
    options: RenderOptions | None = None,
    timings: StageTimings | None = None,
) -> Iterator[np.ndarray]:
    """As `render_array`, a band of `STRIP_ROWS` rows at a time, top to bottom:
    each a (rows, width, 4) uint8 array of straight RGBA, the same pixels as
    those rows of `render_array`'s, valid until the next band is asked for.

    No full-size canvas ever exists, so memory grows with the sources and the
    canvas width, not with its area. The body is parsed and the sources are
    decoded before this returns: every error is raised here, before the
    first band."""
    options = options or RenderOptions()
    timings = timings if timings is not None else StageTimings()
    request = body if isinstance(body, CompositeRequest) else parse_request(body, limits=options.limits)
    budget = options.new_budget(request.canvas)
    with ThreadPoolExecutor(max_workers=1) as pool:
        foreground_job = pool.submit(_prepared_foreground, request, options, timings, budget)
        layers: list[tuple[Image.Image, Placement | None]] = []
        if request.template is not None:
            template = _decoded_template(request.template, options, timings, budget)
            layers.append((template, _placement(request.canvas, request.template, template)))
        foreground = foreground_job.result()
    layers.append((foreground, _placement(request.canvas, request.foreground, foreground)))
    visible = [(image, placement) for image, placement in layers if placement is not None]
    return _bands(request, visible, timings)


def _bands(
    request: CompositeRequest, layers: list[tuple[Image.Image, Placement]], timings: StageTimings
) -> Iterator[np.ndarray]:
    width, height = request.canvas.width, request.canvas.height

    def resized(top: int) -> list[tuple[Image.Image, Placement]]:
        regions = []
        with timings.stage("resize"):
            for image, placement in layers:
                strip = clip_rows(placement, top, top + STRIP_ROWS)
                if strip is not None:
                    regions.append((resize_visible(image, strip), strip))
        return regions

    with ThreadPoolExecutor(max_workers=render_threads(2)) as pool:
        tops = iter(range(0, height, STRIP_ROWS))
        pending = deque((top, pool.submit(resized, top)) for top in itertools.islice(tops, 1 + _BANDS_AHEAD))
        while pending:
            top, job = pending.popleft()
            regions = job.result()
            following = next(tops, None)
            if following is not None:
                pending.append((following, pool.submit(resized, following)))
            rows = min(STRIP_ROWS, height - top)
            with timings.stage("canvas"):
                band = new_canvas(Size(width, rows), request.color)
            with timings.stage("blend"):
                for region, strip in regions:
                    place(band, region, strip, top)
            del regions
            with timings.stage("finish"):
                band = unpremultiply(band, opaque=request.color is not None)
            yield band


def _decoded_template(
    template: Layer, options: RenderOptions, timings: StageTimings, budget: MemoryBudget | None
) -> Image.Image:
    with timings.stage("decode"):
        return load_image(template.source, "template_url", options.sources, budget)


def _prepared_foreground(
    request: CompositeRequest, options: RenderOptions, timings: StageTimings, budget: MemoryBudget | None
) -> Image.Image:
    with timings.stage("decode"):
        foreground = load_image(request.foreground.source, "origin_img", options.sources, budget)
    if request.remove_bg:
        if budget is not None:
            budget.reserve(removal_bytes(*foreground.size), "removeBg")
        with timings.stage("remove_bg"):
            foreground = remove_background(foreground, options.removal)
    return foreground


class _StripPlacer:
    """Strips of the visible layers, resized on the pool and placed on the
    canvas in the order they were submitted: the layers stay in order,
    placing overlaps resizing, and no full-size resized layer ever exists."""

    def __init__(self, pool: Executor, timings: StageTimings) -> None:
        self._pool = pool
        self._timings = timings
        self.pending: deque[tuple[Future[Image.Image], Placement]] = deque()

    def submit(self, image: Image.Image, placement: Placement | None) -> None:
        if placement is None:
            return
        for strip in split_rows(placement, STRIP_ROWS):
            self.pending.append((self._pool.submit(self._resize, image, strip), strip))

    def place_next(self, canvas: np.ndarray) -> None:
        job, strip = self.pending.popleft()
        region = job.result()
        with self._timings.stage("blend"):
            place(canvas, region, strip)

    def _resize(self, image: Image.Image, strip: Placement) -> Image.Image:
        with self._timings.stage("resize"):
            return resize_visible(image, strip)


def _placement(canvas: Size, layer: Layer, image: Image.Image) -> Placement | None:
    size = layer.size or Size(*image.size)
    return clip_to_canvas(canvas, size, layer.x, layer.y)
