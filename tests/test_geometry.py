from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compositor.geometry import Rect, Size, clip_to_canvas, parse_offset, parse_size, source_box


def test_parse_size_reads_width_then_height() -> None:
    assert parse_size("3031x2894") == Size(3031, 2894)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "3840",
        "3840x",
        "x3840",
        "0x10",
        "10x0",
        "-5x10",
        "10 x 10",
        " 10x10",
        "10X10",
        "010x10",
        "1.5x2",
        "10x10x10",
    ],
)
def test_parse_size_refuses_anything_but_two_positive_integers(text: str) -> None:
    with pytest.raises(ValueError, match="WxH"):
        parse_size(text)


@pytest.mark.parametrize("value", [3840, None, ["3840x3840"], True])
def test_parse_size_refuses_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="string"):
        parse_size(value)


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (-72, -72), (2049, 2049), (12.0, 12), (-3.0, -3)])
def test_parse_offset_accepts_signed_integers(value: object, expected: int) -> None:
    assert parse_offset(value) == expected


@pytest.mark.parametrize("value", [1.5, "12", True, False, None, [1]])
def test_parse_offset_refuses_fractions_strings_and_booleans(value: object) -> None:
    with pytest.raises(ValueError, match="integer"):
        parse_offset(value)


def test_layer_inside_the_canvas_is_whole() -> None:
    placement = clip_to_canvas(Size(100, 100), Size(10, 20), 5, 6)
    assert placement is not None
    assert placement.canvas == Rect(5, 6, 15, 26)
    assert placement.layer == Rect(0, 0, 10, 20)


def test_negative_offsets_cut_the_layer_top_left() -> None:
    placement = clip_to_canvas(Size(3840, 3840), Size(3062, 3828), -72, -84)
    assert placement is not None
    assert placement.canvas == Rect(0, 0, 2990, 3744)
    assert placement.layer == Rect(72, 84, 3062, 3828)


def test_layer_past_the_right_edge_is_cut_there() -> None:
    placement = clip_to_canvas(Size(3840, 3840), Size(3828, 3828), 2049, 0)
    assert placement is not None
    assert placement.canvas == Rect(2049, 0, 3840, 3828)
    assert placement.layer == Rect(0, 0, 1791, 3828)


def test_layer_larger_than_the_canvas_covers_it() -> None:
    placement = clip_to_canvas(Size(50, 40), Size(500, 400), -100, -100)
    assert placement is not None
    assert placement.canvas == Rect(0, 0, 50, 40)
    assert placement.layer == Rect(100, 100, 150, 140)


@pytest.mark.parametrize(("x", "y"), [(100, 0), (0, 100), (-10, 0), (0, -10), (-10, -10), (500, 500)])
def test_layer_wholly_outside_is_none(x: int, y: int) -> None:
    assert clip_to_canvas(Size(100, 100), Size(10, 10), x, y) is None


def test_source_box_maps_the_visible_part_back_to_source_pixels() -> None:
    placement = clip_to_canvas(Size(100, 100), Size(200, 200), -50, 0)
    assert placement is not None
    assert source_box(placement, Size(400, 100)) == (100.0, 0.0, 300.0, 50.0)


sizes = st.builds(Size, st.integers(1, 300), st.integers(1, 300))
offsets = st.integers(-400, 400)


@given(canvas=sizes, layer=sizes, x=offsets, y=offsets)
def test_clipping_agrees_with_pixel_by_pixel_intersection(canvas: Size, layer: Size, x: int, y: int) -> None:
    placement = clip_to_canvas(canvas, layer, x, y)
    xs = [px for px in range(x, x + layer.width) if 0 <= px < canvas.width]
    ys = [py for py in range(y, y + layer.height) if 0 <= py < canvas.height]
    if not xs or not ys:
        assert placement is None
        return
    assert placement is not None
    assert placement.canvas == Rect(xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    assert placement.layer == Rect(xs[0] - x, ys[0] - y, xs[-1] + 1 - x, ys[-1] + 1 - y)


@given(w=st.integers(1, 10**9 - 1), h=st.integers(1, 10**9 - 1))
def test_parse_size_round_trips(w: int, h: int) -> None:
    assert parse_size(str(Size(w, h))) == Size(w, h)
