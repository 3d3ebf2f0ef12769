"""The composite itself: canvas fill, Lanczos resize of the visible part of a
layer, and Porter-Duff *over* on premultiplied 8-bit RGBA.

The canvas is a numpy array holding premultiplied RGBA for the whole render;
it is the only full-size buffer. A layer is resized only where it lands on the
canvas, so a huge or mostly off-canvas layer costs what its visible part costs.
"""

from __future__ import annotations

import math
import sys

import cv2
import numpy as np
from PIL import Image

from compositor.geometry import Placement, Size, source_box

# Rows blended per step: a band of a 3840-wide canvas stays in the L2 cache.
_BAND_ROWS = 64


def new_canvas(size: Size, color: tuple[int, int, int] | None) -> np.ndarray:
    """A premultiplied RGBA canvas: opaque `color`, or fully transparent."""
    canvas = np.empty((size.height, size.width, 4), np.uint8)
    # One 32-bit fill: 3x faster than broadcasting a 4-tuple over the pixels.
    # Transparent is filled too, not left to np.zeros' lazy pages: those would
    # fault later, inside the blend, from OpenCV's threads at once.
    fill = 0 if color is None else int.from_bytes(bytes((*color, 255)), sys.byteorder)
    canvas.view(np.uint32).fill(fill)
    return canvas


def resize_visible(image: Image.Image, placement: Placement) -> Image.Image:
    """The visible part of `image` scaled to `placement.layer_size`, exactly as
    `image.resize(layer_size, LANCZOS).crop(visible)` would give it, without
    resampling what is not visible. RGB stays RGB; RGBA comes back
    premultiplied ("RGBa"), because Lanczos must run on premultiplied colour
    (no dark fringes) and the blend wants it that way too."""
    source = Size(*image.size)
    out = placement.layer
    if source == placement.layer_size:
        region = image.crop((out.x0, out.y0, out.x1, out.y1))
        return region.convert("RGBa") if region.mode == "RGBA" else region

    box = source_box(placement, source)
    # Lanczos reads 3 source pixels either side, times the shrink factor; the
    # crop keeps that support (and the image edges) so the weights are the same.
    margin_x = math.ceil(3 * max(source.width / placement.layer_size.width, 1.0)) + 2
    margin_y = math.ceil(3 * max(source.height / placement.layer_size.height, 1.0)) + 2
    cx0 = max(0, math.floor(box[0]) - margin_x)
    cy0 = max(0, math.floor(box[1]) - margin_y)
    cx1 = min(source.width, math.ceil(box[2]) + margin_x)
    cy1 = min(source.height, math.ceil(box[3]) + margin_y)
    region = image.crop((cx0, cy0, cx1, cy1))
    if region.mode == "RGBA":
        region = region.convert("RGBa")
    return region.resize(
        (out.width, out.height),
        Image.Resampling.LANCZOS,
        box=(box[0] - cx0, box[1] - cy0, box[2] - cx0, box[3] - cy0),
    )


def place(canvas: np.ndarray, region: Image.Image, placement: Placement, top: int = 0) -> None:
    """Composite a resized region (a strip of a layer, in the engine) onto the
    canvas at its placement: opaque regions are copied, others blended.
    `canvas` may be a band of the canvas: its first row is canvas row `top`."""
    r = placement.canvas
    target = canvas[r.y0 - top : r.y1 - top, r.x0 : r.x1]
    pixels = np.asarray(region)
    if region.mode == "RGB":
        cv2.cvtColor(pixels, cv2.COLOR_RGB2RGBA, dst=target)
    elif region.mode == "RGBa":
        composite_over(target, pixels)
    else:
        raise ValueError(f"cannot place a region in mode {region.mode}")


def composite_over(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src + dst * (1 - src_alpha), in place, both premultiplied uint8."""
    for top in range(0, dst.shape[0], _BAND_ROWS):
        _over_band(dst[top : top + _BAND_ROWS], src[top : top + _BAND_ROWS])


def _over_band(d: np.ndarray, s: np.ndarray) -> None:
    """Porter-Duff over for one band. OpenCV's saturating uint8 arithmetic
    rounds x/255 exactly and uses both cores. Lanczos ringing can leave a
    resampled pixel with more colour than alpha; that colour is clamped to the
    alpha first (as un-premultiplying would), so nothing wraps. A wholly
    transparent band is skipped and a wholly opaque one copied, which is most
    of a typical cut-out."""
    alpha = np.ascontiguousarray(s[..., 3])
    low, high = cv2.minMaxLoc(alpha)[:2]
    if high == 0:
        return
    if low == 255:
        np.copyto(d, s)
        return
    alpha4 = cv2.merge([alpha, alpha, alpha, alpha])
    under = cv2.multiply(d, cv2.bitwise_not(alpha4), scale=1 / 255)
    cv2.add(cv2.min(s, alpha4), under, dst=d)


def unpremultiply(canvas: np.ndarray, opaque: bool) -> np.ndarray:
    """Turn the premultiplied canvas into straight RGBA, in place.

    colour = round(colour * 255 / alpha), saturated, and 0 where alpha is 0,
    as Pillow's RGBa to RGBA conversion does; band by band, so no second
    canvas is ever allocated. An opaque canvas is already straight."""
    if opaque:
        return canvas
    for top in range(0, canvas.shape[0], _BAND_ROWS):
        band = canvas[top : top + _BAND_ROWS]
        alpha = np.ascontiguousarray(band[..., 3])
        low, high = cv2.minMaxLoc(alpha)[:2]
        if high == 0 or low == 255:
            continue
        divisor = cv2.merge([alpha, alpha, alpha, np.full_like(alpha, 255)])
        cv2.divide(band, divisor, dst=band, scale=255)
    return canvas
