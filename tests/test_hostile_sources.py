"""Sources that attack or misbehave, made for real: a socket that drips, a
body gzipped twice, a gzip bomb, a FIFO, a device, a private address. Each
ends in a SourceError that names the field, within its deadline and cap."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from compositor import SourceError, SourcePolicy
from compositor.sources import decode_image, load_image, read_source
from tests.conftest import png_bytes, serving


class RawServer:
    """A TCP server on loopback that answers each connection with `script`:
    a list of (bytes, seconds to wait before sending them)."""

    def __init__(self, script: list[tuple[bytes, float]]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                for data, wait in self.script:
                    if self.stop.wait(wait):
                        return
                    conn.sendall(data)
            except OSError:
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/image.png"

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[type[RawServer]]:
    made: list[RawServer] = []

    def make(script: list[tuple[bytes, float]]) -> RawServer:
        server = RawServer(script)
        made.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in made:
        server.close()


def answer(body: bytes, *headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def test_a_source_that_drips_its_headers_is_cut_off_at_the_deadline(raw_server) -> None:  # type: ignore[no-untyped-def]
    reply = answer(png_bytes(Image.new("RGB", (4, 4))))
    server = raw_server([(bytes([b]), 0.5) for b in reply])  # one byte every 0.5 s: over a minute in all
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"origin_img: could not be fetched .*within 1 s"):
        read_source(server.url, "origin_img", SourcePolicy(deadline_s=1.0))
    assert time.monotonic() - started < 30  # cut at its deadline, long before the drip ends


def test_a_source_that_drips_its_body_is_cut_off_at_the_deadline(raw_server) -> None:  # type: ignore[no-untyped-def]
    body = b"\0" * 100
    head = answer(body)[: -len(body)]
    server = raw_server([(head, 0.0)] + [(body[i : i + 1], 0.5) for i in range(len(body))])  # 50 s in all
    started = time.monotonic()
    with pytest.raises(SourceError, match="could not be fetched"):
        read_source(server.url, "origin_img", SourcePolicy(deadline_s=1.0))
    assert time.monotonic() - started < 30  # cut at its deadline, long before the drip ends


def test_two_gzip_layers_are_refused(raw_server) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(gzip.compress(b"\0" * (50 * 1024 * 1024)))
    server = raw_server([(answer(bomb, "Content-Encoding: gzip, gzip"), 0.0)])
    with pytest.raises(SourceError, match="more than one content encoding"):
        read_source(server.url, "origin_img", SourcePolicy())


def test_a_gzip_bomb_stops_at_the_cap_as_it_decompresses(raw_server) -> None:  # type: ignore[no-untyped-def]
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # 200 KB that become 200 MB
    server = raw_server([(answer(bomb, "Content-Encoding: gzip"), 0.0)])
    with pytest.raises(SourceError, match="larger than the limit of 1048576 bytes"):
        read_source(server.url, "origin_img", SourcePolicy(max_bytes=1024 * 1024))


def test_a_gzipped_image_within_the_cap_is_read(raw_server) -> None:  # type: ignore[no-untyped-def]
    image = png_bytes(Image.new("RGB", (5, 3), (9, 8, 7)))
    server = raw_server([(answer(gzip.compress(image), "Content-Encoding: gzip"), 0.0)])
    assert load_image(server.url, "origin_img", SourcePolicy()).size == (5, 3)


def test_an_unknown_content_encoding_is_refused(raw_server) -> None:  # type: ignore[no-untyped-def]
    server = raw_server([(answer(b"xx", "Content-Encoding: br"), 0.0)])
    with pytest.raises(SourceError, match="unsupported content encoding 'br'"):
        read_source(server.url, "origin_img", SourcePolicy())


def test_loopback_sources_are_refused_when_private_networks_are_not_allowed(raw_server) -> None:  # type: ignore[no-untyped-def]
    server = raw_server([(answer(png_bytes(Image.new("RGB", (2, 2)))), 0.0)])
    with pytest.raises(SourceError, match="origin_img: names a loopback, private or link-local address"):
        read_source(server.url, "origin_img", SourcePolicy(allow_private=False))
    for address in ("http://10.0.0.1/a.png", "http://169.254.169.254/latest", "http://[::1]:9/a.png"):
        with pytest.raises(SourceError, match="private or link-local"):
            read_source(address, "template_url", SourcePolicy(allow_private=False, deadline_s=2))


def test_a_closed_port_and_a_silent_one_get_the_same_words(raw_server) -> None:  # type: ignore[no-untyped-def]
    silent = raw_server([(b"", 300.0)])  # silent until the test ends, however slow the machine
    policy = SourcePolicy(deadline_s=0.5)
    reasons = []
    with refusing_port() as closed_port:
        for url in (f"http://127.0.0.1:{closed_port}/a.png", silent.url):
            with pytest.raises(SourceError) as caught:
                read_source(url, "origin_img", policy)
            reasons.append(caught.value.reason)
    assert reasons[0] == reasons[1]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SourceError, match="not a regular file"):
        read_source(str(fifo), "origin_img", SourcePolicy())
    assert time.monotonic() - started < 30  # opening it to read would block until a writer came: for ever


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a regular file"):
        read_source("/dev/zero", "origin_img", SourcePolicy())


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="directory"):
        read_source(tmp_path.as_uri(), "origin_img", SourcePolicy())


def test_file_errors_name_the_field_and_no_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        read_source(str(tmp_path / "missing.png"), "origin_img", SourcePolicy())
    assert str(caught.value) == "origin_img: names a local file that does not exist"
    with pytest.raises(SourceError) as caught:
        read_source(str(tmp_path / "x.png"), "template_url", SourcePolicy(file_roots=()))
    assert str(tmp_path) not in str(caught.value)


def test_a_bracket_in_a_host_is_a_field_error() -> None:
    with pytest.raises(SourceError, match="origin_img: is not a valid URL"):
        read_source("http://[bad/a.png", "origin_img", SourcePolicy())


def test_a_text_chunk_bomb_is_a_source_error() -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (80 * 1024 * 1024), zip=True)  # zTXt over Pillow's text limit
    data = png_bytes(Image.new("RGB", (2, 2)), pnginfo=info)
    with pytest.raises(SourceError, match="origin_img: could not be decoded"):
        decode_image(data, "origin_img", max_pixels=10**8)


def test_a_truncated_image_is_a_source_error() -> None:
    data = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(SourceError, match="could not be decoded"):
        decode_image(data[: len(data) // 2], "template_url", max_pixels=10**8)


def test_sixteen_bit_sources_convert_without_an_int64_copy() -> None:
    import tracemalloc

    import numpy as np

    grey = Image.fromarray(np.full((2000, 2000), 65535, np.uint16))
    data = png_bytes(grey)
    tracemalloc.start()
    image = decode_image(data, "origin_img", max_pixels=10**8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert image.getpixel((0, 0)) == (255, 255, 255)
    # 8 MB of 16-bit pixels: an int64 copy alone would be 32 MB.
    assert peak < 30 * 1024 * 1024, peak


def test_an_http_source_is_read_from_inside_a_running_event_loop(raw_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    server = raw_server([(answer(png_bytes(Image.new("RGB", (3, 2)))), 0.0)])

    async def inside() -> tuple[int, int]:  # as an async app (or Playwright's sync API) would call it
        return load_image(server.url, "origin_img", SourcePolicy()).size

    assert asyncio.run(inside()) == (3, 2)


def test_a_name_lookup_that_hangs_is_cut_off_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    import compositor.outbound as outbound

    real = socket.getaddrinfo
    answer = threading.Event()

    def slow(host: str, *args: object, **kwargs: object) -> object:
        if host == "slow-dns.example":
            answer.wait(300)  # a resolver that does not answer (nothing here can make a real one hang)
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outbound.socket, "getaddrinfo", slow)
    started = time.monotonic()
    try:
        with pytest.raises(SourceError, match="could not be fetched"):
            read_source("http://slow-dns.example/a.png", "origin_img", SourcePolicy(deadline_s=1.0))
        assert time.monotonic() - started < 30  # cut at its deadline: the resolver never answers on its own
    finally:
        answer.set()  # the resolver thread the deadline left behind ends


class _Answers(http.server.BaseHTTPRequestHandler):
    """/missing: 404; /broken: 500; /text: 200 with a body that is no image; /moved: a redirect to ?to=."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/moved":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, payload = {"/text": (200, b"not an image")}.get(path, (500 if path == "/broken" else 404, b"no"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def refusing_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on `host` that refuses connections while the block runs: bound here but not listening, so that
    no other process (a suite running beside this one) can start listening on it meanwhile."""
    with socket.socket() as held:
        held.bind((host, 0))
        yield int(held.getsockname()[1])


@contextlib.contextmanager
def _closed_port_url(host: str = "127.0.0.1") -> Iterator[str]:
    with refusing_port(host) as port:
        yield f"http://{host}:{port}/a.png"


def _server_policy(tmp_path: Path, deadline_s: float = 30.0) -> SourcePolicy:
    """The sources policy the mirror's jobs read with (its defaults, as on a loopback server)."""
    from compositor.mirror.service import MirrorSettings

    return MirrorSettings(data_dir=tmp_path, clients=(), source_deadline_s=deadline_s).sources


def _reason(url: str, policy: SourcePolicy) -> str:
    with pytest.raises(SourceError) as caught:
        load_image(url, "origin_img", policy)
    return str(caught.value)


def test_a_server_gives_one_reason_for_every_loopback_source_that_fails(raw_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Else a caller could map which of the mirror's own ports answer HTTP, and with what.
    policy = _server_policy(tmp_path, deadline_s=1.0)
    twice = raw_server([(answer(b"x", "Content-Encoding: gzip, gzip"), 0.0)])
    silent = raw_server([(b"", 300.0)])  # silent until the test ends
    with serving(_Answers) as base, _closed_port_url() as closed_url:
        urls = [
            closed_url,
            f"{base}/missing.png",
            f"{base}/broken.png",
            f"{base}/text",
            f"{base}/moved?to={base}/missing.png",
            twice.url,
            silent.url,
        ]
        reasons = {url: _reason(url, policy) for url in urls}
        # The mock's policy: a loopback answer that redirects beyond this machine is one more cause.
        beyond = _reason(f"{base}/moved?to=http://example.com/a.png", replace(policy, local_only=True))
    assert len({*reasons.values(), beyond}) == 1, (reasons, beyond)
    assert beyond.startswith("origin_img: could not be fetched")
    # Refused before any connection, whatever listens there: that keeps its own words.
    with _closed_port_url() as closed_url:
        refused = _reason(closed_url, replace(policy, allow_private=False))
    assert "names a loopback, private or link-local address" in refused


def test_a_public_source_keeps_its_specific_reason_unless_it_redirects_to_a_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compositor.outbound as outbound

    # 127.0.0.1 stands for a public address here (no test reaches beyond loopback); 127.0.0.2 stays private.
    monkeypatch.setattr(outbound, "is_refused_address", lambda address: address != "127.0.0.1")
    policy = _server_policy(tmp_path, deadline_s=5.0)
    private = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Answers)
    threading.Thread(target=private.serve_forever, daemon=True).start()
    try:
        with serving(_Answers) as base:
            assert _reason(f"{base}/missing.png", policy) == "origin_img: could not be fetched: HTTP 404"
            assert "is not an image" in _reason(f"{base}/text", policy)
            hidden = _reason(f"{base}/moved?to=http://127.0.0.2:{private.server_address[1]}/missing.png", policy)
            with _closed_port_url("127.0.0.2") as closed_url:
                assert hidden == _reason(closed_url, policy)
    finally:
        private.shutdown()
        private.server_close()


def test_a_local_users_render_keeps_the_specific_reason_for_loopback(tmp_path: Path) -> None:
    with serving(_Answers) as base:
        assert _reason(f"{base}/missing.png", SourcePolicy()) == "origin_img: could not be fetched: HTTP 404"
        assert "is not an image" in _reason(f"{base}/text", SourcePolicy())
        assert "HTTP 404" in _reason(f"{base}/missing.png", SourcePolicy(file_roots=(), private_causes=True))
