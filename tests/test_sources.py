from __future__ import annotations

import base64
import contextlib
import http.server
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from compositor.errors import SourceError
from compositor.sources import SourcePolicy, decode_image, load_image, read_source
from tests.conftest import IMAGES, png_bytes, serving

UNLIMITED = SourcePolicy()


def decode(data: bytes) -> Image.Image:
    return decode_image(data, "origin_img", max_pixels=10**8)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image", "expected_mode"),
    [
        (Image.new("RGB", (4, 3), (10, 20, 30)), "RGB"),
        (Image.new("RGBA", (4, 3), (10, 20, 30, 40)), "RGBA"),
        (Image.new("L", (4, 3), 77), "RGB"),
        (Image.new("LA", (4, 3), (77, 100)), "RGBA"),
        (Image.new("P", (4, 3), 1), "RGB"),
        (Image.new("1", (4, 3), 1), "RGB"),
    ],
)
def test_png_modes_become_rgb_or_rgba(image: Image.Image, expected_mode: str) -> None:
    decoded = decode(png_bytes(image))
    assert decoded.mode == expected_mode
    assert decoded.size == (4, 3)


def test_a_palette_with_a_transparent_index_keeps_its_transparency() -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0])
    image.putpixel((1, 0), 1)
    decoded = decode(png_bytes(image, transparency=1))
    assert decoded.mode == "RGBA"
    assert decoded.getpixel((0, 0)) == (255, 0, 0, 255)
    assert decoded.getpixel((1, 0))[3] == 0


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode.startswith("I;16")
    decoded = decode(png_bytes(source))
    assert [decoded.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_decodes_to_rgb() -> None:
    decoded = decode(encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert decoded.mode == "RGB"
    r, g, b = decoded.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_webp_with_alpha_decodes() -> None:
    decoded = decode(encoded(Image.new("RGBA", (8, 8), (0, 0, 255, 128)), "WEBP", lossless=True))
    assert decoded.mode == "RGBA" and decoded.getpixel((0, 0)) == (0, 0, 255, 128)


def test_only_the_first_frame_of_a_gif_is_used() -> None:
    frames = [Image.new("P", (4, 4), i) for i in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(data).getpixel((0, 0))[:3] == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    image = decode((IMAGES / "exif-orientation-6.jpg").read_bytes())
    assert image.size == (480, 640)  # stored 640x480, displayed upright
    r, g, b = image.getpixel((10, 10))  # the green marker sits top-left once upright
    assert g > 120 and r < 90 and b < 90


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    data = png_bytes(Image.new("L", (4000, 4000)))
    with pytest.raises(SourceError, match="decompression bomb") as caught:
        decode_image(data, "template_url", max_pixels=1_000_000)
    assert caught.value.field == "template_url"


def test_bytes_that_are_not_an_image_are_refused() -> None:
    with pytest.raises(SourceError, match="not an image"):
        decode(b"<html>hello</html>")


def test_a_truncated_image_is_refused() -> None:
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    with pytest.raises(SourceError, match="could not be decoded"):
        decode(data[: len(data) // 2])


def test_formats_outside_the_supported_set_are_refused() -> None:
    with pytest.raises(SourceError, match="supported format"):
        decode(encoded(Image.new("RGB", (4, 4)), "BMP"))


def test_data_uris_are_read_base64_or_percent_encoded() -> None:
    data = png_bytes(Image.new("RGB", (2, 2), (1, 2, 3)))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert read_source(uri, "origin_img", UNLIMITED) == data
    assert read_source("data:,a%20b", "origin_img", UNLIMITED) == b"a b"


def test_a_malformed_base64_payload_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="base64"):
        read_source("data:image/png;base64,@@@", "origin_img", UNLIMITED)


def test_relative_paths_resolve_against_the_base_dir(tmp_path: Path) -> None:
    Image.new("RGB", (3, 3)).save(tmp_path / "a.png")
    assert load_image("a.png", "origin_img", SourcePolicy(base_dir=tmp_path)).size == (3, 3)


def test_file_urls_are_read(tmp_path: Path) -> None:
    Image.new("RGB", (3, 5)).save(tmp_path / "a b.png")
    assert load_image((tmp_path / "a b.png").as_uri(), "origin_img", UNLIMITED).size == (3, 5)


def test_a_missing_file_names_the_field_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as caught:
        read_source(str(tmp_path / "nope.png"), "template_url", UNLIMITED)
    assert caught.value.field == "template_url"


def test_files_outside_the_allowed_roots_are_refused(tmp_path: Path) -> None:
    (tmp_path / "inside").mkdir()
    Image.new("RGB", (3, 3)).save(tmp_path / "outside.png")
    Image.new("RGB", (3, 3)).save(tmp_path / "inside" / "ok.png")
    policy = SourcePolicy(file_roots=(tmp_path / "inside",))
    assert read_source(str(tmp_path / "inside" / "ok.png"), "origin_img", policy)
    with pytest.raises(SourceError, match="outside the directories"):
        read_source(str(tmp_path / "inside" / ".." / "outside.png"), "origin_img", policy)
    with pytest.raises(SourceError, match="outside the directories"):
        read_source((tmp_path / "outside.png").as_uri(), "origin_img", SourcePolicy(file_roots=()))


def test_files_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"\0" * 2000)
    with pytest.raises(SourceError, match="larger than the limit"):
        read_source(str(tmp_path / "big.png"), "origin_img", SourcePolicy(max_bytes=1000))


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, bytes, float]]] = {}

    def do_GET(self) -> None:
        status, body, delay = self.routes.get(self.path, (404, b"missing", 0.0))
        time.sleep(delay)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    with serving(_Handler) as base:
        yield base


def test_http_sources_are_fetched(http_base: str) -> None:
    _Handler.routes["/a.png"] = (200, png_bytes(Image.new("RGB", (7, 2))), 0.0)
    assert load_image(f"{http_base}/a.png", "origin_img", UNLIMITED).size == (7, 2)


def test_an_http_error_status_is_a_source_error(http_base: str) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        read_source(f"{http_base}/missing.png", "origin_img", UNLIMITED)


def test_a_slow_server_times_out(http_base: str) -> None:
    _Handler.routes["/slow.png"] = (200, b"x", 60.0)  # answers after a minute
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"within 0\.3 s"):
        read_source(f"{http_base}/slow.png", "origin_img", SourcePolicy(deadline_s=0.3))
    assert time.monotonic() - started < 30  # cut at its deadline, long before the answer


def test_a_download_over_the_size_limit_is_refused(http_base: str) -> None:
    _Handler.routes["/big.png"] = (200, b"\0" * 5000, 0.0)
    with pytest.raises(SourceError, match="larger than the limit"):
        read_source(f"{http_base}/big.png", "origin_img", SourcePolicy(max_bytes=1000))


def test_an_unreachable_host_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="could not be fetched"):
        read_source("http://127.0.0.1:9/a.png", "origin_img", SourcePolicy(deadline_s=1.0))


def test_http_can_be_switched_off() -> None:
    with pytest.raises(SourceError, match="does not fetch"):
        read_source("https://example.com/a.png", "origin_img", SourcePolicy(allow_http=False))
