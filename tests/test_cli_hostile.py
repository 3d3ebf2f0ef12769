"""The CLI against bodies and files that are hostile or just wrong: each one
exits 1 (the body) or 2 (a file or source that cannot be used) with one line,
never a traceback, never a hang, never all of the memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import minimal_body, png_bytes


def cli(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "compositor.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def one_line(done: subprocess.CompletedProcess[bytes]) -> str:
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("command", ["render", "validate"])
def test_a_device_as_the_body_is_refused_at_once(command: str, tmp_path: Path) -> None:
    done = (
        cli(command, "/dev/zero", "-o", str(tmp_path / "x.png")) if command == "render" else cli(command, "/dev/zero")
    )
    assert done.returncode == 2 and "not a regular file" in one_line(done)


def test_a_fifo_as_the_body_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "body.json"
    os.mkfifo(fifo)
    done = cli("validate", str(fifo), timeout=120)  # opening it to read would block for ever: only a hang fails
    assert done.returncode == 2 and "not a regular file" in one_line(done)


def test_endless_stdin_is_cut_at_the_cap() -> None:
    # 300 MB of spaces: more than the 256 MiB a body may be.
    with subprocess.Popen(
        [sys.executable, "-m", "compositor.cli", "validate", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdin is not None
        chunk = b" " * (1 << 20)
        try:
            for _ in range(300):
                process.stdin.write(chunk)
        except BrokenPipeError:
            pass
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"larger than" in out + err and b"Traceback" not in out + err


@pytest.mark.parametrize(
    "raw, words",
    [
        (b'{"overlay_origin_x": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
        (b'{"canvas_size": "\xff\xfe"}', "not UTF-8"),
    ],
    ids=["huge-integer", "deep-nesting", "invalid-utf8"],
)
def test_bodies_python_cannot_hold_are_1003_on_body(raw: bytes, words: str, tmp_path: Path) -> None:
    request = tmp_path / "body.json"
    request.write_bytes(raw)
    for args in (("validate", "--json", str(request)), ("render", str(request), "-o", str(tmp_path / "x.png"))):
        done = cli(*args)
        assert done.returncode == 1
        line = one_line(done)
        assert words in line and "body" in line


def test_a_lone_surrogate_field_name_is_reported_not_a_traceback(tmp_path: Path) -> None:
    request = tmp_path / "body.json"
    request.write_text('{"\\ud800": 1, "canvas_size": "8x8"}')
    done = cli("validate", str(request))
    assert done.returncode == 1
    assert "Traceback" not in (done.stdout + done.stderr).decode("utf-8", "replace")
    assert b"\\ud800" in done.stdout


def write_body(tmp_path: Path, source: bytes, name: str) -> Path:
    (tmp_path / name).write_bytes(source)
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body(origin_img=name)))
    return request


def test_a_truncated_jpeg_is_a_source_error_not_a_write_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buffer, "JPEG")
    request = write_body(tmp_path, buffer.getvalue()[:3000], "cut.jpg")
    done = cli("render", str(request), "-o", str(tmp_path / "out.png"))
    assert done.returncode == 2
    line = one_line(done)
    assert line.startswith("compositor: origin_img: could not be decoded") and "cannot write" not in line
    assert not (tmp_path / "out.png").exists()


def test_a_compressed_text_bomb_is_a_source_error(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (80 * 1024 * 1024), zip=True)
    request = write_body(tmp_path, png_bytes(Image.new("RGB", (4, 4)), pnginfo=info), "bomb.png")
    done = cli("render", str(request), "-o", str(tmp_path / "out.png"))
    assert done.returncode == 2 and "origin_img: could not be decoded" in one_line(done)


def test_submit_sends_no_local_file_that_is_not_an_image(tmp_path: Path) -> None:
    secret = tmp_path / "id_rsa"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body(origin_img=str(secret))))
    # Port 9 on loopback: nothing listens, and nothing may be sent before the check anyway.
    done = cli("submit", str(request), "--base-url", "http://127.0.0.1:9", "--api-key", "k" * 32, "-o", "x.png")
    assert done.returncode == 2
    assert "origin_img: is not a PNG, JPEG, WebP or GIF image" in one_line(done)


def test_render_into_dev_null_leaves_the_device_alone(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "fg.png")
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body()))
    done = cli("render", str(request), "-o", "/dev/null")
    assert done.returncode == 0
    assert Path("/dev/null").is_char_device()


def test_render_into_a_missing_folder_is_an_error_not_a_new_folder(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "fg.png")
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body()))
    done = cli("render", str(request), "-o", str(tmp_path / "no-such-folder" / "out.png"))
    assert done.returncode == 2 and "cannot write" in one_line(done)
    assert not (tmp_path / "no-such-folder").exists()


def test_submit_to_a_malformed_base_url_is_one_line(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "fg.png")
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body()))
    done = cli(
        "submit", str(request), "--base-url", "http://[::1", "--api-key", "k" * 32, "-o", str(tmp_path / "x.png")
    )
    assert done.returncode == 2 and one_line(done).startswith("compositor:")


def test_a_source_url_with_a_bad_port_is_a_field_error(tmp_path: Path) -> None:
    request = tmp_path / "body.json"
    request.write_text(json.dumps(minimal_body(origin_img="http://127.0.0.1:abc/x")))
    done = cli("render", str(request), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1 and "origin_img" in one_line(done)
