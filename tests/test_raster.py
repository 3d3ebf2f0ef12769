from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from compositor.geometry import Size, clip_to_canvas
from compositor.raster import composite_over, new_canvas, place, resize_visible, unpremultiply
from tests.conftest import premultiplied


def noisy_rgba(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA")


def photo_like_rgba(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour and alpha with mild noise. (On pure random noise Pillow's
    own box resize can differ from resize-then-crop by much more: it may run
    its two passes in the other order and it clips overshoot between them.)"""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 4), dtype=np.uint8), "RGBA")
    smooth = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)).astype(np.int16)
    noisy = smooth + rng.integers(-3, 4, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGBA")


@settings(max_examples=40, deadline=None)
@given(
    src=st.tuples(st.integers(8, 90), st.integers(8, 90)),
    dst=st.tuples(st.integers(4, 160), st.integers(4, 160)),
    x=st.integers(-120, 60),
    y=st.integers(-120, 60),
)
def test_resizing_the_visible_part_equals_resizing_all_then_cropping(
    src: tuple[int, int], dst: tuple[int, int], x: int, y: int
) -> None:
    image = photo_like_rgba(*src, seed=sum(src) + sum(dst))
    placement = clip_to_canvas(Size(64, 64), Size(*dst), x, y)
    if placement is None:
        return
    r = placement.layer
    expected = image.convert("RGBa").resize(dst, Image.Resampling.LANCZOS).crop((r.x0, r.y0, r.x1, r.y1))
    actual = resize_visible(image, placement)
    assert actual.mode == "RGBa"
    diff = np.abs(np.asarray(actual).astype(int) - np.asarray(expected).astype(int))
    assert diff.max() <= 2


def test_opaque_sources_stay_rgb_and_same_size_sources_are_only_cropped() -> None:
    image = Image.effect_noise((40, 30), 60).convert("RGB")
    placement = clip_to_canvas(Size(20, 20), Size(40, 30), -5, -3)
    assert placement is not None
    region = resize_visible(image, placement)
    assert region.mode == "RGB"
    assert np.array_equal(np.asarray(region), np.asarray(image.crop((5, 3, 25, 23))))


def test_over_matches_the_porter_duff_formula_within_one_level() -> None:
    rng = np.random.default_rng(7)
    straight_src = rng.integers(0, 256, (64, 64, 4)).astype(np.float64)
    straight_dst = rng.integers(0, 256, (64, 64, 4)).astype(np.float64)
    src = np.round(np.dstack([straight_src[..., :3] * straight_src[..., 3:] / 255, straight_src[..., 3]]))
    dst = np.round(np.dstack([straight_dst[..., :3] * straight_dst[..., 3:] / 255, straight_dst[..., 3]]))
    expected = src + dst * (1 - src[..., 3:] / 255)
    actual = dst.astype(np.uint8)
    composite_over(actual, src.astype(np.uint8))
    assert np.abs(actual - expected).max() <= 1


def test_colour_that_rings_above_its_alpha_is_clamped_not_wrapped() -> None:
    # Lanczos overshoot can produce premultiplied colour > alpha near an edge.
    canvas = np.full((1, 1, 4), 255, np.uint8)
    composite_over(canvas, np.array([[[200, 0, 0, 10]]], np.uint8))
    assert canvas.tolist() == [[[255, 245, 245, 255]]]


def test_a_soft_edge_shows_no_dark_fringe_on_a_matching_background() -> None:
    # A white subject whose transparent pixels are black, scaled up on white:
    # straight-alpha resampling would pull grey into the edge.
    alpha = np.zeros((40, 40), np.uint8)
    alpha[10:30, 10:30] = 255
    alpha[9, 10:30] = alpha[30, 10:30] = 128
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[alpha > 0, :3] = 255
    rgba[..., 3] = alpha
    placement = clip_to_canvas(Size(200, 200), Size(200, 200), 0, 0)
    assert placement is not None
    canvas = new_canvas(Size(200, 200), (255, 255, 255))
    place(canvas, resize_visible(Image.fromarray(rgba, "RGBA"), placement), placement)
    assert canvas[..., :3].min() >= 254


def test_a_coloured_canvas_stays_opaque_under_translucent_layers() -> None:
    canvas = new_canvas(Size(50, 50), (10, 20, 30))
    layer = Image.new("RGBA", (50, 50), (200, 100, 0, 77))
    placement = clip_to_canvas(Size(50, 50), Size(50, 50), 0, 0)
    assert placement is not None
    place(canvas, resize_visible(layer, placement), placement)
    assert (canvas[..., 3] == 255).all()
    # 200*77/255 + 10*178/255 = 67.4, ...
    assert unpremultiply(canvas, opaque=True)[5, 5].tolist() == [67, 44, 21, 255]


def test_a_layer_on_an_empty_canvas_keeps_its_own_alpha() -> None:
    layer = noisy_rgba(30, 20, seed=3)
    canvas = new_canvas(Size(30, 20), None)
    placement = clip_to_canvas(Size(30, 20), Size(30, 20), 0, 0)
    assert placement is not None
    place(canvas, resize_visible(layer, placement), placement)
    result = Image.fromarray(unpremultiply(canvas, opaque=False), "RGBA")
    assert np.abs(premultiplied(result) - premultiplied(layer)).max() <= 1.0


def test_unpremultiplying_matches_pillows_conversion() -> None:
    rng = np.random.default_rng(11)
    alpha = rng.integers(0, 256, (200, 300, 1), dtype=np.uint8)
    colour = np.minimum(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8), alpha)
    canvas = np.ascontiguousarray(np.dstack([colour, alpha]))
    expected = np.asarray(Image.fromarray(canvas, "RGBa").convert("RGBA")).astype(int)
    actual = unpremultiply(canvas.copy(), opaque=False).astype(int)
    assert np.abs(actual - expected).max() <= 1


@pytest.mark.parametrize("colour", [None, (1, 2, 3)])
def test_a_new_canvas_is_filled_exactly(colour: tuple[int, int, int] | None) -> None:
    canvas = new_canvas(Size(7, 5), colour)
    assert canvas.shape == (5, 7, 4)
    expected = (0, 0, 0, 0) if colour is None else (*colour, 255)
    assert (canvas == expected).all()
