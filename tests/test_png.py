"""The PNG writer (compositor/png.py): every file decodes to exactly the
pixels it was given, in Pillow, in libpng's checker and in a browser."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from compositor import png
from compositor.encode import EncodeOptions, encode
from compositor.png import adler32_combine, encode_png, write_png_bands

PNGCHECK = shutil.which("pngcheck")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def random_rgba(height: int, width: int, seed: int, opaque: bool = False) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    if opaque:
        pixels[..., 3] = 255
    return pixels


def decoded(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA"
    return np.asarray(image)


def banded(pixels: np.ndarray, rows: list[int], **kwargs: int | None) -> bytes:
    sink = io.BytesIO()
    bands, start = [], 0
    for count in rows:
        bands.append(pixels[start : start + count])
        start += count
    write_png_bands(iter(bands), pixels.shape[1], pixels.shape[0], sink, **kwargs)  # type: ignore[arg-type]
    return sink.getvalue()


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 977), (613, 1), (37, 3), (101, 33), (64, 257), (5, 4099)])
@pytest.mark.parametrize("level", [None, 6])
def test_the_pixels_come_back_byte_for_byte(height: int, width: int, level: int | None) -> None:
    pixels = random_rgba(height, width, seed=height * 7919 + width)
    assert np.array_equal(decoded(encode_png(pixels, level=level)), pixels)


@pytest.mark.parametrize("segment_bytes", [1, 97, 4 * 33 + 1, 1000, 10**9])
def test_every_segment_boundary_keeps_the_pixels(monkeypatch: pytest.MonkeyPatch, segment_bytes: int) -> None:
    # Segments of one row, of a few rows, and one for the whole image.
    monkeypatch.setattr(png, "SEGMENT_BYTES", segment_bytes)
    pixels = random_rgba(29, 33, seed=segment_bytes)
    assert np.array_equal(decoded(encode_png(pixels)), pixels)


@pytest.mark.parametrize("rows", [[1] * 17, [3, 1, 7, 6], [16, 1], [1, 16], [17]])
def test_every_band_boundary_keeps_the_pixels(monkeypatch: pytest.MonkeyPatch, rows: list[int]) -> None:
    monkeypatch.setattr(png, "SEGMENT_BYTES", 5 * (19 * 4 + 1))  # and segments of 5 rows inside the bands
    pixels = random_rgba(17, 19, seed=len(rows))
    assert np.array_equal(decoded(banded(pixels, rows)), pixels)


def test_a_smooth_image_compresses_far_below_its_raw_size() -> None:
    gradient = np.zeros((256, 256, 4), np.uint8)
    gradient[..., 0] = np.arange(256)[None, :]
    gradient[..., 1] = np.arange(256)[:, None]
    gradient[..., 3] = 255
    assert len(encode_png(gradient)) < gradient.nbytes / 20


def test_the_default_encode_is_this_writer() -> None:
    pixels = random_rgba(40, 30, seed=3)
    assert encode(pixels) == encode_png(pixels)
    assert np.array_equal(decoded(encode(pixels, EncodeOptions(png_level=1))), pixels)


@given(st.binary(max_size=300), st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_adler32_combine_equals_the_checksum_of_the_joined_bytes(first: bytes, second: bytes) -> None:
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)


def test_adler32_combine_holds_for_lengths_past_the_modulus() -> None:
    first, second = bytes(range(256)) * 300, bytes(reversed(range(256))) * 700  # 76,800 and 179,200 bytes
    assert adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) == zlib.adler32(first + second)


def test_bad_levels_and_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="0-9"):
        encode_png(random_rgba(2, 2, 0), level=10)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2, 3), np.uint8))


@pytest.mark.skipif(PNGCHECK is None, reason="pngcheck is not installed (make test installs it)")
@pytest.mark.parametrize(("height", "width"), [(1, 1), (300, 211), (1, 4099), (777, 3)])
def test_libpngs_checker_finds_every_file_valid(tmp_path: Path, height: int, width: int) -> None:
    path = tmp_path / "out.png"
    path.write_bytes(encode_png(random_rgba(height, width, seed=width)))
    done = subprocess.run([str(PNGCHECK), "-v", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "No errors detected" in done.stdout, done.stdout[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (make test installs it)")
def test_a_browser_decodes_the_same_pixels() -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    from tests.test_page import FLAGS

    # Opaque: a canvas holds premultiplied pixels, so only opaque ones come back exactly.
    pixels = random_rgba(61, 97, seed=11, opaque=True)
    uri = "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode()
    script = """async (uri) => {
        const image = new Image();
        image.src = uri;
        await image.decode();
        const canvas = document.createElement("canvas");
        canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
        const context = canvas.getContext("2d");
        context.drawImage(image, 0, 0);
        return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
    }"""
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            values = browser.new_page().evaluate(script, uri)
        finally:
            browser.close()
    assert np.array_equal(np.array(values, np.uint8).reshape(pixels.shape), pixels)
