"""Pre-flight reads a source's first bytes only, whatever kind of source it is.

Every kind (a path, a `file://` URL, a `data:` URI, http(s), a source map's
entry) gives the same header; http stops reading once the header is in; a
header beyond the first prefix is found with a larger one; and only a whole
source is ever judged not to be an image.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image, PngImagePlugin

from compositor import preflight
from compositor.cli import main
from compositor.errors import SourceError
from compositor.preflight import SourceHeader, read_header
from compositor.sourcemap import SourceMap
from compositor.sources import SourcePolicy, read_prefix, read_source
from tests.conftest import serving

REPO = Path(__file__).resolve().parent.parent
CDN = "https://cdn.example.com/img/"  # only ever mapped to a local file: never resolved, never fetched


def _png_with_alpha() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (300, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_with_a_big_icc_block() -> bytes:
    """A 120x80 JPEG turned by EXIF (orientation 6) whose frame header comes
    after 200 kB of ICC profile: beyond the first 64 KiB and 128 KiB prefixes."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), "red").save(buffer, "JPEG", icc_profile=bytes(200_000), exif=exif.tobytes())
    return buffer.getvalue()


def _big_noise_png() -> bytes:
    """A 4000x4000 grey PNG of noise, stored uncompressed: 16 MB, its header in its first 100 bytes."""
    buffer = io.BytesIO()
    Image.effect_noise((4000, 4000), 64).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


IMAGES: dict[str, tuple[bytes, SourceHeader]] = {
    "alpha.png": (_png_with_alpha(), SourceHeader("PNG", 300, 200, True)),
    "icc.jpg": (_jpeg_with_a_big_icc_block(), SourceHeader("JPEG", 80, 120, False)),
}


@dataclass
class Served:
    """What a request got: its Range header, the status, and the body's bytes
    written before the client stopped reading (or the body ended)."""

    path: str
    range: str | None
    status: int = 0
    sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class _Handler(http.server.BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    honour_range = True
    served: ClassVar[list[Served]] = []

    def setup(self) -> None:
        super().setup()
        # A small send buffer: once the client stops reading, the server soon cannot write either.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

    def do_GET(self) -> None:
        record = Served(self.path, self.headers.get("range"))
        self.served.append(record)
        try:
            self._answer(record)
        except (BrokenPipeError, ConnectionResetError):  # the client closed mid-body: what it is meant to do
            pass
        finally:
            record.done.set()

    def _answer(self, record: Served) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/moved":
            record.status = 302
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.files.get(path)
        if body is None:
            record.status = 404
            self.send_error(404)
            return
        start, end = 0, len(body)
        if self.honour_range and record.range and record.range.startswith("bytes=0-"):
            end = min(end, int(record.range.removeprefix("bytes=0-")) + 1)
            record.status = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(body)}")
        else:
            record.status = 200
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.end_headers()
        for offset in range(start, end, 16 * 1024):
            chunk = body[offset : min(offset + 16 * 1024, end)]
            self.wfile.write(chunk)
            record.sent += len(chunk)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return _big_noise_png()


@pytest.fixture(params=[True, False], ids=["range-honoured", "range-ignored"])
def server(request: pytest.FixtureRequest, big_png: bytes) -> Iterator[tuple[str, type[_Handler]]]:
    class Handler(_Handler):
        files = {f"/{name}": data for name, (data, _) in IMAGES.items()} | {
            "/big.png": big_png,
            "/text": b"hello, this is not an image\n" * 10,
        }
        honour_range = request.param
        served: ClassVar[list[Served]] = []

    with serving(Handler) as base:
        yield base, Handler


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name, (data, _) in IMAGES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _refs(kind: str, folder: Path, name: str, base: str) -> tuple[str, SourcePolicy]:
    """`name` as a source of the given kind, and the policy that reads it."""
    if kind == "path":
        return name, SourcePolicy(base_dir=folder)
    if kind == "file-url":
        return (folder / name).as_uri(), SourcePolicy()
    if kind == "data-uri":
        return "data:image/png;base64," + base64.b64encode((folder / name).read_bytes()).decode(), SourcePolicy()
    if kind == "http":
        return f"{base}/{name}", SourcePolicy()
    assert kind == "source-map"
    return CDN + name, SourcePolicy(source_map=SourceMap.from_entries({CDN: folder}))


KINDS = ["path", "file-url", "data-uri", "http", "source-map"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_kind_of_source_gives_the_same_header(
    kind: str, name: str, folder: Path, server: tuple[str, type[_Handler]]
) -> None:
    ref, policy = _refs(kind, folder, name, server[0])
    assert read_header(ref, "origin_img", policy) == IMAGES[name][1]


@pytest.mark.parametrize("kind", KINDS)
def test_a_prefix_says_whether_it_is_the_whole_source(
    kind: str, folder: Path, server: tuple[str, type[_Handler]]
) -> None:
    ref, policy = _refs(kind, folder, "icc.jpg", server[0])
    whole = read_source(ref, "origin_img", policy)
    assert read_prefix(ref, "origin_img", policy, 1000) == (whole[:1000], False, False)
    assert read_prefix(ref, "origin_img", policy, len(whole)) == (whole, True, False)
    assert read_prefix(ref, "origin_img", policy, 10 * len(whole)) == (whole, True, False)


def test_an_http_source_is_not_downloaded_whole(big_png: bytes, server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    header = read_header(f"{base}/big.png", "origin_img", SourcePolicy())
    assert header == SourceHeader("PNG", 4000, 4000, False)
    [request] = handler.served  # the first prefix was enough: one request
    assert request.done.wait(10), "the server is still sending: the client did not close"
    assert request.range == "bytes=0-65535"
    assert request.status == (206 if handler.honour_range else 200)
    print(f"{request.status}: {request.sent} of {len(big_png)} bytes sent")
    assert request.sent < len(big_png) // 8


def test_an_http_source_follows_redirects_for_its_prefix(server: tuple[str, type[_Handler]]) -> None:
    base, handler = server
    ref = f"{base}/moved?to={base}/icc.jpg"
    assert read_header(ref, "origin_img", SourcePolicy()) == IMAGES["icc.jpg"][1]
    assert {record.status for record in handler.served} == {302, 206 if handler.honour_range else 200}


def test_an_http_source_keeps_its_errors(server: tuple[str, type[_Handler]]) -> None:
    base, _ = server
    with pytest.raises(SourceError) as missing:
        read_header(f"{base}/gone.png", "origin_img", SourcePolicy())
    assert missing.value.reason == "could not be fetched: HTTP 404"
    with pytest.raises(SourceError) as text:
        read_header(f"{base}/text", "origin_img", SourcePolicy())
    assert text.value.reason == "is not an image in a supported format (PNG, JPEG, WebP, GIF)"
    # A private address under a policy that does not tell: one reason for all.
    silent = SourcePolicy(private_causes=False)
    with pytest.raises(SourceError) as hidden:
        read_header(f"{base}/text", "origin_img", silent)
    assert hidden.value.reason == silent.unreachable
    with pytest.raises(SourceError) as refused:
        read_header(f"{base}/icc.jpg", "origin_img", SourcePolicy(allow_private=False))
    assert "loopback, private or link-local" in refused.value.reason


def test_an_http_source_over_the_byte_limit_is_refused_by_its_announced_size(
    server: tuple[str, type[_Handler]], big_png: bytes
) -> None:
    base, handler = server
    policy = SourcePolicy(max_bytes=len(big_png) // 2)
    with pytest.raises(SourceError) as caught:
        read_header(f"{base}/big.png", "origin_img", policy)
    assert caught.value.reason == f"is larger than the limit of {policy.max_bytes} bytes"
    assert all(record.done.wait(10) and record.sent < len(big_png) // 8 for record in handler.served)


@pytest.mark.parametrize("kind", ["path", "data-uri", "source-map"])
def test_a_local_source_over_the_byte_limit_is_refused(kind: str, folder: Path) -> None:
    ref, policy = _refs(kind, folder, "icc.jpg", "")
    limited = replace(policy, max_bytes=100_000)
    with pytest.raises(SourceError) as caught:
        read_header(ref, "origin_img", limited)
    assert caught.value.reason == "is larger than the limit of 100000 bytes"


def test_a_frame_header_beyond_the_first_prefix_is_found_with_larger_ones(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real = preflight.read_prefix

    def spy(ref: str, field: str, policy: SourcePolicy, size: int) -> Any:
        sizes.append(size)
        return real(ref, field, policy, size)

    monkeypatch.setattr(preflight, "read_prefix", spy)
    assert read_header("icc.jpg", "origin_img", SourcePolicy(base_dir=folder)) == IMAGES["icc.jpg"][1]
    assert sizes == [64 * 1024, 128 * 1024, 256 * 1024]


def test_a_png_with_a_big_chunk_before_its_pixels_is_read_with_larger_prefixes(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 300_000)
    Image.new("LA", (70, 90)).save(tmp_path / "a.png", pnginfo=info)
    assert read_header("a.png", "origin_img", SourcePolicy(base_dir=tmp_path)) == SourceHeader("PNG", 70, 90, True)


def test_a_source_that_is_not_an_image_is_judged_on_all_of_it(tmp_path: Path) -> None:
    """200 kB of JPEG's start, then garbage: unreadable, but only once all of it was read."""
    (tmp_path / "a.jpg").write_bytes(IMAGES["icc.jpg"][0][:150_000] + bytes(50_000))
    with pytest.raises(SourceError) as caught:
        read_header("a.jpg", "origin_img", SourcePolicy(base_dir=tmp_path))
    assert caught.value.field == "origin_img"


def _truncated_png(path: Path) -> Path:
    """The first 100 bytes of a PNG whose text chunk comes before its pixels."""
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 300)
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG", pnginfo=info)
    path.write_bytes(buffer.getvalue()[:100])
    return path


def test_a_truncated_png_is_a_1108_on_its_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _truncated_png(tmp_path / "a.png")
    body = {
        "canvas_size": "100x100",
        "origin_img": "a.png",
        "modify_origin_img_size": "100x100",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        "color_code": "#ffffff",
    }
    (tmp_path / "body.json").write_text(json.dumps(body))
    rc = main(["validate", str(tmp_path / "body.json"), "--sources", "--json"])
    envelope = json.loads(capsys.readouterr().out)
    assert (rc, envelope["code"]) == (1, 1108)
    assert envelope["data"]["errors"] == [
        {"field": "origin_img", "message": "could not be decoded: Truncated File Read"}
    ]


# The child's own peak: Linux keeps ru_maxrss across fork and exec, so the
# child resets its high-water mark (VmHWM) before each validation.
_MEASURE = """
import json, re, sys, time
from compositor.cli import main
def hwm():
    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024
results = []
for body in sys.argv[1:]:
    try:
        open('/proc/self/clear_refs', 'w').write('5')
    except OSError:
        print(json.dumps(None)); sys.exit()
    start = time.perf_counter()
    rc = main(['validate', body, '--sources', '--json'])
    results.append({'rc': rc, 'peak': hwm(), 'seconds': time.perf_counter() - start})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9000x9000 sources of one flat grey, a JPEG and a PNG, and a body for each."""
    folder = tmp_path_factory.mktemp("huge")
    picture = Image.new("L", (9000, 9000), 128)
    picture.save(folder / "big.jpg", quality=90)
    picture.save(folder / "big.png")
    del picture
    for name in ("big.jpg", "big.png"):
        body = {
            "canvas_size": "100x100",
            "origin_img": name,
            "modify_origin_img_size": "100x100",
            "overlay_origin_x": 0,
            "overlay_origin_y": 0,
            "color_code": "#ffffff",
        }
        (folder / f"{name}.json").write_text(json.dumps(body))
    return folder


def test_a_9000x9000_header_is_read_in_well_under_150_mb(huge: Path) -> None:
    bodies = [str(huge / "big.jpg.json"), str(huge / "big.png.json")]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *bodies], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    *envelopes, measured = [json.loads(line) for line in done.stdout.splitlines()]
    if measured is None:
        pytest.skip("this system cannot reset a process's peak memory (/proc/self/clear_refs)")
    for name, envelope, result in zip(("JPEG", "PNG"), envelopes, measured, strict=True):
        print(f"9000x9000 {name} --sources: peak {result['peak'] / 2**20:.1f} MiB, {result['seconds'] * 1000:.0f} ms")
        assert (result["rc"], envelope["code"]) == (0, 1000)
        assert result["peak"] < 150 * 2**20
