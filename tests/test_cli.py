from __future__ import annotations

import http.server
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

from compositor.cli import main
from tests.conftest import REQUESTS, minimal_body, serving


@pytest.fixture
def request_dir(tmp_path: Path) -> Path:
    Image.new("RGBA", (8, 8), (255, 0, 0, 255)).save(tmp_path / "fg.png")
    (tmp_path / "ok.json").write_text(json.dumps(minimal_body(color_code="#00ff00")))
    return tmp_path


def test_render_writes_a_png_of_the_canvas_size(request_dir: Path) -> None:
    out = request_dir / "out.png"
    assert main(["render", str(request_dir / "ok.json"), "-o", str(out)]) == 0
    image = Image.open(out)
    assert (image.format, image.mode, image.size) == ("PNG", "RGBA", (64, 48))


def test_the_output_file_gets_the_umask_mode_not_a_private_one(request_dir: Path) -> None:
    out = request_dir / "out.png"
    previous = os.umask(0o022)
    try:
        assert main(["render", str(request_dir / "ok.json"), "-o", str(out)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_render_defaults_to_the_request_name_with_png(request_dir: Path) -> None:
    assert main(["render", str(request_dir / "ok.json")]) == 0
    assert (request_dir / "ok.png").exists()


@pytest.mark.parametrize(("suffix", "fmt"), [(".webp", "WEBP"), (".jpg", "JPEG")])
def test_the_output_suffix_picks_the_format(request_dir: Path, suffix: str, fmt: str) -> None:
    out = request_dir / f"out{suffix}"
    assert main(["render", str(request_dir / "ok.json"), "-o", str(out)]) == 0
    assert Image.open(out).format == fmt


def test_a_zlib_png_level_is_honoured(request_dir: Path) -> None:
    out = request_dir / "out.png"
    assert main(["render", str(request_dir / "ok.json"), "-o", str(out), "--png-level", "9"]) == 0
    assert Image.open(out).getpixel((5, 9)) == (255, 0, 0, 255)


def test_an_invalid_body_prints_the_envelope_and_exits_1(request_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (request_dir / "bad.json").write_text(json.dumps({"canvas_size": "0x0"}))
    assert main(["render", str(request_dir / "bad.json"), "-o", str(request_dir / "x.png")]) == 1
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["code"] == 1003 and envelope["data"]["errors"][0]["field"] == "canvas_size"
    assert not (request_dir / "x.png").exists()


def test_a_body_that_is_not_json_is_a_1003_on_body(request_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (request_dir / "bad.json").write_text("{nope")
    assert main(["validate", str(request_dir / "bad.json"), "--json"]) == 1
    envelope = json.loads(capsys.readouterr().out)
    assert envelope["code"] == 1003 and envelope["data"]["errors"][0]["field"] == "body"


def test_an_unfetchable_source_exits_2_with_one_line(request_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (request_dir / "missing.json").write_text(json.dumps(minimal_body(origin_img="nope.png")))
    assert main(["render", str(request_dir / "missing.json"), "-o", str(request_dir / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "origin_img" in err and "does not exist" in err


def test_a_failed_render_leaves_an_existing_output_untouched(request_dir: Path) -> None:
    out = request_dir / "keep.png"
    out.write_bytes(b"precious")
    (request_dir / "missing.json").write_text(json.dumps(minimal_body(origin_img="nope.png")))
    assert main(["render", str(request_dir / "missing.json"), "-o", str(out)]) == 2
    assert out.read_bytes() == b"precious"
    assert [p.name for p in request_dir.iterdir() if p.name.startswith(".keep")] == []


def test_validate_json_prints_exactly_one_envelope(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REQUESTS / "example-3-template-and-color.json"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"code": 1000, "msg": "OK", "data": {"errors": [], "warnings": []}}


def test_validate_strict_requires_the_webhook(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REQUESTS / "example-2-color-only.json"), "--strict", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["data"]["errors"][0]["field"] == "webhookUrl"


def test_validate_reads_limits_from_flags(request_dir: Path) -> None:
    assert main(["validate", str(request_dir / "ok.json"), "--max-canvas-side", "32"]) == 1


def test_validate_in_text_lists_errors_and_warnings(request_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (request_dir / "w.json").write_text(json.dumps(minimal_body(overlay_origin_x="a", extra=1)))
    assert main(["validate", str(request_dir / "w.json")]) == 1
    out = capsys.readouterr().out
    assert "invalid (1003)" in out and "error   overlay_origin_x" in out and "warning extra" in out


def console_script() -> str:
    return shutil.which("compositor") or str(Path(sys.executable).parent / "compositor")


def buffered_env() -> dict[str, str]:
    """The environment with Python's usual block-buffered pipes, so a test
    sees what a process that skips its tear-down would lose."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def test_render_reads_the_body_from_stdin_and_writes_to_stdout(request_dir: Path) -> None:
    body = json.dumps(minimal_body(origin_img=str(request_dir / "fg.png")))
    done = subprocess.run(
        [console_script(), "render", "-", "-o", "-"],
        input=body.encode(),
        capture_output=True,
        check=True,
        env=buffered_env(),
    )
    # The console script ends without the interpreter's tear-down: all of the
    # PNG must still have been flushed.
    assert done.stdout.endswith(b"IEND\xaeB`\x82")
    assert Image.open(io.BytesIO(done.stdout)).size == (64, 48)


def test_console_script_flushes_its_report_and_keeps_the_exit_code(request_dir: Path) -> None:
    (request_dir / "bad.json").write_text(json.dumps(minimal_body(canvas_size="0x0")))
    done = subprocess.run(
        [console_script(), "validate", str(request_dir / "bad.json")], capture_output=True, env=buffered_env()
    )
    assert done.returncode == 1
    assert done.stdout.decode().startswith("invalid (1003)") and "canvas_size" in done.stdout.decode()


def test_stdin_without_an_output_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("{}"))
    assert main(["render", "-"]) == 2


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request as the mirror's upload would, and records it."""

    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        _Recorder.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("content-length") or 0))
        data = json.dumps({"code": 1000, "msg": "OK", "data": {"url": "http://127.0.0.1:9/uploads/x.png"}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    ("field", "content"),
    [("origin_img", b"GIF89a, and then only text: this is no image at all\n" * 4), ("template_url", _truncated_png())],
)
def test_submit_sends_nothing_when_a_local_file_is_not_a_whole_image(
    request_dir: Path, capsys: pytest.CaptureFixture[str], field: str, content: bytes
) -> None:
    (request_dir / "bad.bin").write_bytes(content)
    overrides: dict[str, object] = {field: "bad.bin"}
    if field == "template_url":
        overrides.update(modify_template_size="16x16", overlay_template_x=0, overlay_template_y=0)
    (request_dir / "body.json").write_text(json.dumps(minimal_body(**overrides)))
    _Recorder.seen = []
    with serving(_Recorder) as base:
        code = main(
            [
                *("submit", str(request_dir / "body.json"), "--base-url", base, "--api-key", "k" * 32),
                *("-o", str(request_dir / "out.png"), "--timeout", "5"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert _Recorder.seen == []  # not one request: nothing was sent
    assert code == 2 and err.count("\n") == 0 and err.startswith(f"compositor: {field}: "), err
    assert not (request_dir / "out.png").exists()


def test_sigterm_mid_write_leaves_no_half_file_and_says_terminated(request_dir: Path) -> None:
    """SIGTERM while the output is being written (here: as its first bytes go out) ends `render` as Ctrl-C does:
    the hidden file it was writing is removed, an existing output stays, and it says so (exit 143)."""
    out = request_dir / "keep.png"
    out.write_bytes(b"precious")
    script = (
        "import os, signal, sys\n"
        "import compositor.files as files\n"
        "real = files.atomic_file\n"
        "def killed_mid_write(target):\n"
        "    cm = real(target)\n"
        "    class Sink:\n"
        "        def __enter__(self):\n"
        "            sink = cm.__enter__()\n"
        "            sink.write(b'half')\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "            return sink\n"
        "        def __exit__(self, *exc):\n"
        "            return cm.__exit__(*exc)\n"
        "    return Sink()\n"
        "files.atomic_file = killed_mid_write\n"
        "from compositor.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "render", str(request_dir / "ok.json"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=request_dir,
    )
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "compositor: terminated" and "Traceback" not in done.stderr
    assert out.read_bytes() == b"precious"
    assert [p.name for p in request_dir.iterdir() if p.name.startswith(".keep")] == []
