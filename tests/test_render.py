from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositor import InvalidRequestError, RenderOptions, SourceError, SourcePolicy, StageTimings, render
from tests.conftest import FIXTURES, PEER, REQUESTS, fixture_sources, minimal_body, premultiplied
from tests.reference import reference_render

GOLDEN = FIXTURES / "golden"
CASES = sorted((GOLDEN / "cases").glob("*.json"))
DOCUMENTED = sorted(REQUESTS.glob("example-*.json"))


def render_file(path: Path) -> Image.Image:
    return render(json.loads(path.read_text()), options=RenderOptions(sources=fixture_sources(path.parent)))


def assert_close(actual: Image.Image, expected: Image.Image, *, max_diff: float, mean_diff: float) -> None:
    assert actual.size == expected.size
    diff = np.abs(premultiplied(actual) - premultiplied(expected))
    assert diff.max() <= max_diff, f"max diff {diff.max():.1f} at {np.unravel_index(diff.argmax(), diff.shape)}"
    assert diff.mean() <= mean_diff, f"mean diff {diff.mean():.4f}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_render_matches_its_golden(case: Path) -> None:
    if "peer-fixtures" in case.read_text() and not PEER.exists():
        pytest.skip(f"this case reads rembg's peer fixtures, not found at {PEER}")
    # Tight enough to catch another filter, a one-pixel shift, a lost EXIF
    # rotation or a fringe; loose enough for another Pillow build's rounding.
    assert_close(render_file(case), Image.open(GOLDEN / f"{case.stem}.png"), max_diff=2, mean_diff=0.02)


@pytest.mark.parametrize("request_file", DOCUMENTED, ids=[r.stem for r in DOCUMENTED])
def test_documented_examples_at_full_size_match_a_plain_pillow_composite(request_file: Path) -> None:
    body = json.loads(request_file.read_text())
    image = render_file(request_file)
    assert image.mode == "RGBA"
    assert image.size == (3840, 3840)
    assert_close(image, reference_render(body, request_file.parent), max_diff=3, mean_diff=0.05)


def test_a_coloured_canvas_is_opaque_everywhere() -> None:
    image = render_file(REQUESTS / "example-3-template-and-color.json")
    assert image.getchannel("A").getextrema() == (255, 255)


def test_without_colour_the_canvas_is_transparent_where_nothing_lands(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "fg.png")
    image = render(minimal_body(), options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert image.getpixel((0, 0)) == (0, 0, 0, 0)
    assert image.getpixel((10, 10)) == (9, 9, 9, 255)


def test_a_layer_wholly_off_canvas_leaves_the_canvas_as_filled(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (9, 9, 9)).save(tmp_path / "fg.png")
    body = minimal_body(overlay_origin_x=-100, color_code="#102030")
    image = render(body, options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert image.getcolors() == [(64 * 48, (16, 32, 48, 255))]


def test_the_foreground_is_drawn_over_the_template(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "fg.png")
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "t.png")
    body = minimal_body(template_url="t.png", modify_template_size="64x48", overlay_template_x=0, overlay_template_y=0)
    image = render(body, options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert image.getpixel((10, 10)) == (255, 0, 0, 255)
    assert image.getpixel((40, 40)) == (0, 0, 255, 255)


def test_an_invalid_body_raises_before_any_source_is_read() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        render({"canvas_size": "100000x100000", "origin_img": "/nonexistent.png"})
    assert caught.value.report.errors[0].field == "canvas_size"


def test_an_unreadable_source_names_its_field(tmp_path: Path) -> None:
    (tmp_path / "fg.png").write_text("not an image")
    with pytest.raises(SourceError) as caught:
        render(minimal_body(), options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert caught.value.field == "origin_img" and caught.value.code == 1108


def test_stage_timings_are_recorded(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "fg.png")
    timings = StageTimings()
    render(minimal_body(), options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)), timings=timings)
    assert set(timings.seconds) == {"decode", "canvas", "resize", "blend", "finish"}


def test_an_unreadable_template_names_its_field(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "fg.png")
    (tmp_path / "t.png").write_text("not an image")
    body = minimal_body(template_url="t.png", modify_template_size="64x48", overlay_template_x=0, overlay_template_y=0)
    with pytest.raises(SourceError) as caught:
        render(body, options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert caught.value.field == "template_url"


def test_the_template_is_placed_while_the_foreground_is_still_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compositor.engine as engine
    import compositor.threads

    # Two threads, whatever this process was limited to or the machine has: with one, this test's
    # foreground (which waits for the template) would hold the only thread.
    monkeypatch.setattr(compositor.threads, "_threads", 2)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "fg.png")
    Image.new("RGB", (4, 4), (0, 0, 255)).save(tmp_path / "t.png")
    template_placed = threading.Event()
    real_load, real_place = engine.load_image, engine.place

    def load_image(ref: str, field: str, policy: SourcePolicy, budget: object = None) -> Image.Image:
        # The foreground becomes ready only once the template is on the canvas.
        if field == "origin_img":
            assert template_placed.wait(timeout=10), "the template waited for the foreground"
        return real_load(ref, field, policy, budget)  # type: ignore[arg-type]

    def place(canvas: np.ndarray, region: Image.Image, strip: object) -> None:
        real_place(canvas, region, strip)  # type: ignore[arg-type]
        if region.getpixel((0, 0)) == (0, 0, 255):
            template_placed.set()

    monkeypatch.setattr(engine, "load_image", load_image)
    monkeypatch.setattr(engine, "place", place)
    body = minimal_body(template_url="t.png", modify_template_size="64x48", overlay_template_x=0, overlay_template_y=0)
    image = render(body, options=RenderOptions(sources=SourcePolicy(base_dir=tmp_path)))
    assert image.getpixel((10, 10)) == (255, 0, 0, 255) and image.getpixel((40, 40)) == (0, 0, 255, 255)
