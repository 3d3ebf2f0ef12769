"""The band-by-band render and the streamed PNG behind `render --low-memory`."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositor import RenderOptions, SourceError
from compositor.cli import main
from compositor.encode import write_png_bands
from compositor.engine import STRIP_ROWS, render_array, render_bands
from compositor.files import atomic_file
from compositor.geometry import Placement, Rect, Size, clip_rows, split_rows
from tests.conftest import FIXTURES, PEER, REQUESTS, SOURCE_MAP_FILE, fixture_sources, minimal_body

GOLDEN_CASES = sorted((FIXTURES / "golden" / "cases").glob("*.json"))
DOCUMENTED = sorted(REQUESTS.glob("example-*.json"))


def options_for(base: Path) -> RenderOptions:
    return RenderOptions(sources=fixture_sources(base))


def png_of(bands: list[np.ndarray], width: int, height: int, **kwargs: int) -> bytes:
    sink = io.BytesIO()
    write_png_bands(iter(bands), width, height, sink, **kwargs)
    return sink.getvalue()


@pytest.mark.parametrize("request_file", DOCUMENTED + GOLDEN_CASES, ids=lambda p: p.stem)
def test_the_bands_hold_the_same_pixels_as_the_whole_render(request_file: Path) -> None:
    if "peer-fixtures" in request_file.read_text() and not PEER.exists():
        pytest.skip(f"this case reads rembg's peer fixtures, not found at {PEER}")
    body = json.loads(request_file.read_text())
    whole = render_array(body, options=options_for(request_file.parent))
    bands = [band.copy() for band in render_bands(body, options=options_for(request_file.parent))]
    assert [len(band) for band in bands[:-1]] == [STRIP_ROWS] * (len(bands) - 1)
    assert np.array_equal(np.concatenate(bands), whole)


@pytest.mark.parametrize("canvas", ["64x1000", "700x385", "33x1"])
def test_a_canvas_that_is_not_a_whole_number_of_bands_ends_with_a_short_one(tmp_path: Path, canvas: str) -> None:
    Image.new("RGBA", (20, 30), (200, 10, 10, 128)).save(tmp_path / "fg.png")
    body = minimal_body(
        canvas_size=canvas, modify_origin_img_size="50x900", overlay_origin_x=-5, overlay_origin_y=-3, color_code=...
    )
    whole = render_array(body, options=options_for(tmp_path))
    bands = [band.copy() for band in render_bands(body, options=options_for(tmp_path))]
    assert sum(len(band) for band in bands) == whole.shape[0]
    assert np.array_equal(np.concatenate(bands), whole)


def test_a_bad_source_fails_before_the_first_band(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="origin_img"):
        render_bands(minimal_body(origin_img="missing.png"), options=options_for(tmp_path))


def test_strips_are_cut_at_the_same_canvas_rows_whatever_the_layer() -> None:
    placement = Placement(canvas=Rect(5, 100, 50, 900), layer=Rect(0, 20, 45, 820), layer_size=Size(45, 1000))
    strips = split_rows(placement, 384)
    assert [(s.canvas.y0, s.canvas.y1) for s in strips] == [(100, 384), (384, 768), (768, 900)]
    assert [(s.layer.y0, s.layer.y1) for s in strips] == [(20, 304), (304, 688), (688, 820)]
    assert clip_rows(placement, 0, 100) is None


def test_streamed_bands_decode_to_exactly_those_pixels() -> None:
    rng = np.random.default_rng(7)
    bands = [rng.integers(0, 256, (rows, 37, 4), np.uint8) for rows in (5, 1, 16, 3)]
    image = Image.open(io.BytesIO(png_of(bands, 37, 25)))
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (37, 25))
    assert np.array_equal(np.asarray(image), np.concatenate(bands))


def test_the_compressed_rows_are_one_zlib_stream_with_its_checksum() -> None:
    # Bands are deflated apart, on two threads; joined, they must still be
    # one stream whose Adler-32 a strict inflater accepts.
    rng = np.random.default_rng(11)
    bands = [rng.integers(0, 256, (rows, 9, 4), np.uint8) for rows in (4, 4, 4, 2)]
    data = png_of(bands, 9, 14, level=6)
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append((data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]))
        offset += 12 + length
    assert [kind for kind, _ in chunks][:2] == [b"IHDR", b"IDAT"] and chunks[-1][0] == b"IEND"
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == 14 * (1 + 9 * 4)


def test_rows_are_filtered_so_that_rows_alike_compress() -> None:
    # Each row is the one above plus 1: no two rows repeat, but every
    # Up-filtered row is the same run of ones.
    first = np.random.default_rng(3).integers(0, 256, (1, 256, 4), np.uint8)
    pixels = (first + np.arange(256, dtype=np.uint8)[:, None, None]).astype(np.uint8)
    assert len(png_of([pixels], 256, 256)) < zlib_size_of_rows(pixels) / 10


def zlib_size_of_rows(pixels: np.ndarray) -> int:
    rows = np.concatenate([np.zeros((pixels.shape[0], 1), np.uint8), pixels.reshape(pixels.shape[0], -1)], axis=1)
    return len(zlib.compress(rows.tobytes(), 1))


@pytest.mark.parametrize(("rows", "message"), [((3, 3), "6 rows, not 7"), ((4, 4), "more than 7 rows")])
def test_bands_that_do_not_add_up_to_the_height_are_refused(rows: tuple[int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        png_of([np.zeros((r, 4, 4), np.uint8) for r in rows], 4, 7)


def test_a_band_of_another_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\(rows, 4, 4\)"):
        png_of([np.zeros((2, 5, 4), np.uint8)], 4, 2)


def test_an_atomic_file_that_fails_leaves_what_was_there(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"earlier")
    with pytest.raises(RuntimeError), atomic_file(target) as sink:
        sink.write(b"half")
        raise RuntimeError("the render failed")
    assert target.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_cli_low_memory_writes_the_same_picture(tmp_path: Path) -> None:
    request = REQUESTS / "example-3-template-and-color.json"
    mapped = ["--source-map", str(SOURCE_MAP_FILE)]
    assert main(["render", str(request), "-o", str(tmp_path / "whole.png"), *mapped]) == 0
    assert main(["render", str(request), "-o", str(tmp_path / "bands.png"), "--low-memory", *mapped]) == 0
    whole, bands = Image.open(tmp_path / "whole.png"), Image.open(tmp_path / "bands.png")
    assert bands.size == (3840, 3840)
    assert np.array_equal(np.asarray(bands), np.asarray(whole))


def test_cli_low_memory_writes_png_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = REQUESTS / "example-2-color-only.json"
    assert main(["render", str(request), "-o", str(tmp_path / "out.webp"), "--low-memory"]) == 2
    assert "--low-memory writes PNG only" in capsys.readouterr().err
    assert not (tmp_path / "out.webp").exists()


def test_cli_low_memory_with_a_bad_source_keeps_the_earlier_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "body.json").write_text(json.dumps(minimal_body(origin_img="missing.png")))
    (tmp_path / "out.png").write_bytes(b"earlier")
    assert main(["render", str(tmp_path / "body.json"), "-o", str(tmp_path / "out.png"), "--low-memory"]) == 2
    assert "origin_img" in capsys.readouterr().err
    assert (tmp_path / "out.png").read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["body.json", "out.png"]
