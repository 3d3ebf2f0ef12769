"""`compositor validate --sources`: warnings from the sources' headers, never their pixels."""

from __future__ import annotations

import base64
import http.server
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from compositor.cli import main

REPO = Path(__file__).resolve().parent.parent


def _image(path: Path, size: tuple[int, int], mode: str = "RGB", **save: Any) -> Path:
    Image.new(mode, size).save(path, **save)
    return path


def _body(**fields: object) -> dict[str, object]:
    """A foreground a.png, 100x100 on a 100x100 canvas, with a colour: clean unless `fields` change it."""
    body: dict[str, object] = {
        "canvas_size": "100x100",
        "origin_img": "a.png",
        "modify_origin_img_size": "100x100",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        "color_code": "#ffffff",
    }
    body.update(fields)
    return {name: value for name, value in body.items() if value is not None}


def _check(
    tmp_path: Path, body: dict[str, object], *flags: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    rc = main(["validate", str(path), "--sources", "--json", *flags])
    return rc, json.loads(capsys.readouterr().out)


def _warnings(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    return [(w["field"], w["message"]) for w in envelope["data"]["warnings"]]


@pytest.fixture
def fg(tmp_path: Path) -> Path:
    return _image(tmp_path / "a.png", (100, 100))


def test_a_clean_body_gets_no_warning(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, envelope = _check(tmp_path, _body(color_code=None), capsys=capsys)
    assert (rc, envelope["code"], _warnings(envelope)) == (0, 1000, [])


def test_without_sources_the_pictures_are_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "body.json").write_text(json.dumps(_body(origin_img="missing.png")))
    assert main(["validate", str(tmp_path / "body.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["code"] == 1000


@pytest.mark.parametrize(("target", "warned"), [("509x500", False), ("510x500", False), ("511x500", True)])
def test_a_stretch_of_more_than_2_percent_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, warned: bool
) -> None:
    _image(tmp_path / "a.png", (500, 500))
    body = _body(canvas_size=target, modify_origin_img_size=target)
    _, envelope = _check(tmp_path, body, capsys=capsys)
    expected = [("modify_origin_img_size", f"stretches 500x500 to {target}: 1.02x wider for its height than the")]
    found = [(field, message[: len(expected[0][1])]) for field, message in _warnings(envelope)]
    assert found == (expected if warned else [])


def test_a_stretch_says_how_much_and_what_size_keeps_the_proportions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image(tmp_path / "a.png", (400, 400))
    body = _body(canvas_size="400x800", modify_origin_img_size="400x800")
    _, envelope = _check(tmp_path, body, capsys=capsys)
    assert _warnings(envelope) == [
        (
            "modify_origin_img_size",
            "stretches 400x400 to 400x800: 2.00x taller for its width than the picture (400x400 keeps its proportions)",
        )
    ]


@pytest.mark.parametrize(("target", "warned"), [("200x200", False), ("201x201", True)])
def test_an_enlargement_of_more_than_2x_is_warned(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str], target: str, warned: bool
) -> None:
    _, envelope = _check(tmp_path, _body(canvas_size=target, modify_origin_img_size=target), capsys=capsys)
    message = f"enlarges 100x100 to {target} (2.01x): expect a soft image"
    assert _warnings(envelope) == ([("modify_origin_img_size", message)] if warned else [])


def test_a_template_at_its_natural_size_is_neither_stretched_nor_enlarged(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image(tmp_path / "t.png", (100, 100))
    _, envelope = _check(tmp_path, _body(template_url="t.png"), capsys=capsys)
    assert _warnings(envelope) == []
    _, envelope = _check(tmp_path, _body(template_url="t.png", modify_template_size="700x100"), capsys=capsys)
    assert _warnings(envelope) == [
        (
            "modify_template_size",
            "stretches 100x100 to 700x100: 7.00x wider for its height than the picture (700x700 keeps its proportions)",
        ),
        ("modify_template_size", "enlarges 100x100 to 700x100 (7.00x wide, 1.00x tall): expect a soft image"),
        ("overlay_template_x", "cuts off 85.7% of the template (700x100) at the right edge of the 100x100 canvas"),
    ]


def test_an_uncovered_canvas_without_color_code_is_warned_with_where(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, envelope = _check(tmp_path, _body(canvas_size="200x100", color_code=None), capsys=capsys)
    assert _warnings(envelope) == [
        (
            "color_code",
            "50% of the canvas stays transparent (within x 100-200, y 0-100):"
            " set color_code or cover it with the template",
        )
    ]


def test_an_uncovered_canvas_with_color_code_is_not_warned(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, envelope = _check(tmp_path, _body(canvas_size="200x100"), capsys=capsys)
    assert _warnings(envelope) == []


def test_a_canvas_covered_only_by_a_source_with_alpha_may_stay_transparent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image(tmp_path / "a.png", (100, 100), "RGBA")
    _, envelope = _check(tmp_path, _body(color_code=None), capsys=capsys)
    assert _warnings(envelope) == [
        (
            "color_code",
            "up to 100% of the canvas may stay transparent (within x 0-100, y 0-100), where origin_img's own"
            " transparency shows: set color_code or cover it with the template",
        )
    ]


def test_an_opaque_template_under_a_transparent_foreground_covers_the_canvas(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image(tmp_path / "a.png", (100, 100), "RGBA")
    _image(tmp_path / "t.jpg", (100, 100))
    _, envelope = _check(tmp_path, _body(color_code=None, template_url="t.jpg"), capsys=capsys)
    assert _warnings(envelope) == []


@pytest.mark.parametrize(("x", "warned"), [(-50, False), (-51, True)])
def test_a_layer_more_than_half_cut_off_is_warned(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str], x: int, warned: bool
) -> None:
    _, envelope = _check(tmp_path, _body(overlay_origin_x=x), capsys=capsys)
    message = "cuts off 51% of the foreground (100x100) at the left edge of the 100x100 canvas"
    assert _warnings(envelope) == ([("overlay_origin_x", message)] if warned else [])


def test_a_cut_off_names_every_edge(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, envelope = _check(tmp_path, _body(overlay_origin_x=80, overlay_origin_y=-10), capsys=capsys)
    message = "cuts off 82% of the foreground (100x100) at the top and right edges of the 100x100 canvas"
    assert _warnings(envelope) == [("overlay_origin_x", message)]


def test_remove_bg_on_a_foreground_with_alpha_is_warned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _image(tmp_path / "a.png", (100, 100), "RGBA")
    _, envelope = _check(tmp_path, _body(removeBg=True), capsys=capsys)
    assert _warnings(envelope) == [
        (
            "removeBg",
            "origin_img already has an alpha channel (PNG, RGBA): the mask will be recomputed over its transparency",
        )
    ]


def test_remove_bg_on_an_opaque_foreground_is_not_warned(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, envelope = _check(tmp_path, _body(removeBg=True), capsys=capsys)
    assert _warnings(envelope) == []


def test_a_missing_source_is_a_1108_on_its_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, envelope = _check(tmp_path, _body(origin_img="missing.png"), capsys=capsys)
    assert (rc, envelope["code"]) == (1, 1108)
    assert envelope["data"]["errors"] == [{"field": "origin_img", "message": "names a local file that does not exist"}]


def test_a_source_that_is_not_an_image_is_a_1108_on_its_field(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.png").write_text("not a picture")
    rc, envelope = _check(tmp_path, _body(template_url="t.png"), capsys=capsys)
    assert (rc, envelope["code"]) == (1, 1108)
    assert [e["field"] for e in envelope["data"]["errors"]] == ["template_url"]
    assert "not an image" in envelope["data"]["errors"][0]["message"]


def test_a_source_over_the_pixel_limit_is_a_1108(tmp_path: Path) -> None:
    from compositor.errors import SourceError
    from compositor.preflight import read_header
    from compositor.sources import SourcePolicy

    _image(tmp_path / "a.png", (100, 100))
    with pytest.raises(SourceError, match="decompression bomb: 100x100 exceeds the limit of 9999 pixels") as caught:
        read_header("a.png", "origin_img", SourcePolicy(base_dir=tmp_path, max_pixels=9999))
    assert (caught.value.field, int(caught.value.code)) == ("origin_img", 1108)


def test_strict_turns_a_warning_into_an_error(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = _body(webhookUrl="http://127.0.0.1:9/hook", canvas_size="700x700", modify_origin_img_size="700x700")
    rc, envelope = _check(tmp_path, body, "--strict", capsys=capsys)
    assert (rc, envelope["code"]) == (1, 1003)
    assert [e["field"] for e in envelope["data"]["errors"]] == ["modify_origin_img_size"]
    assert _warnings(envelope) == []


def test_a_1003_wins_over_a_1108(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hook = "http://127.0.0.1:9/hook"
    body = _body(template_url="missing.png", webhookUrl=hook, canvas_size="700x700", modify_origin_img_size="700x700")
    rc, envelope = _check(tmp_path, body, "--strict", capsys=capsys)
    assert (rc, envelope["code"]) == (1, 1003)
    assert {e["field"] for e in envelope["data"]["errors"]} == {"template_url", "modify_origin_img_size"}


def test_the_text_output_names_field_and_numbers(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "body.json").write_text(json.dumps(_body(canvas_size="700x700", modify_origin_img_size="700x700")))
    assert main(["validate", str(tmp_path / "body.json"), "--sources"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "valid (1000)",
        "  warning modify_origin_img_size: enlarges 100x100 to 700x700 (7.00x): expect a soft image",
    ]
    (tmp_path / "body.json").write_text(json.dumps(_body(origin_img="nope.png")))
    assert main(["validate", str(tmp_path / "body.json"), "--sources"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "invalid (1108)",
        "  error   origin_img: names a local file that does not exist",
    ]


def test_a_catalogue_reads_each_bodys_sources(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [_body(), _body(canvas_size="700x700", modify_origin_img_size="700x700"), _body(origin_img="nope.png")]
    (tmp_path / "bodies.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["validate", str(tmp_path / "bodies.jsonl"), "--sources", "--json"]) == 1
    found = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["code"], len(e["data"]["warnings"])) for e in found] == [(1000, 0), (1000, 1), (1108, 0)]


# Each kind of source: the warning proves its header was read.


def _enlarged(source: str) -> dict[str, object]:
    return _body(origin_img=source, canvas_size="700x700", modify_origin_img_size="700x700")


def test_a_file_url_source(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, envelope = _check(tmp_path, _enlarged(fg.as_uri()), capsys=capsys)
    assert [field for field, _ in _warnings(envelope)] == ["modify_origin_img_size"]


def test_a_data_uri_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buffer, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    _, envelope = _check(tmp_path, _enlarged(uri), capsys=capsys)
    assert [field for field, _ in _warnings(envelope)] == ["modify_origin_img_size"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    folder = tmp_path / "served"
    folder.mkdir()
    _image(folder / "a.png", (100, 100))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_http_source(tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, envelope = _check(tmp_path, _enlarged(f"{server}/a.png"), capsys=capsys)
    assert [field for field, _ in _warnings(envelope)] == ["modify_origin_img_size"]
    rc, envelope = _check(tmp_path, _enlarged(f"{server}/gone.png"), capsys=capsys)
    assert (rc, envelope["code"], envelope["data"]["errors"][0]["field"]) == (1, 1108, "origin_img")


def test_a_source_mapped_by_a_source_map(tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "map.json").write_text(json.dumps({"https://cdn.example.com/img/": "./"}))
    body = _enlarged("https://cdn.example.com/img/a.png")
    _, envelope = _check(tmp_path, body, "--source-map", str(tmp_path / "map.json"), capsys=capsys)
    assert [field for field, _ in _warnings(envelope)] == ["modify_origin_img_size"]


def _jpeg_oriented_6(path: Path) -> Path:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _image(path, (100, 50), exif=exif.tobytes())


def test_exif_orientation_6_swaps_the_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _jpeg_oriented_6(tmp_path / "a.jpg")
    body = _body(origin_img="a.jpg", canvas_size="50x100", modify_origin_img_size="50x100")
    _, envelope = _check(tmp_path, body, capsys=capsys)
    assert _warnings(envelope) == []
    body = _body(origin_img="a.jpg", canvas_size="100x50", modify_origin_img_size="100x50")
    _, envelope = _check(tmp_path, body, capsys=capsys)
    assert _warnings(envelope)[0][1].startswith("stretches 50x100 to 100x50:")


def test_read_header_reports_format_size_and_alpha(tmp_path: Path) -> None:
    from compositor.preflight import SourceHeader, read_header
    from compositor.sources import SourcePolicy

    _image(tmp_path / "p.png", (30, 20), "P", transparency=0)
    _jpeg_oriented_6(tmp_path / "o.jpg")
    policy = SourcePolicy(base_dir=tmp_path)
    assert read_header("p.png", "origin_img", policy) == SourceHeader("PNG", 30, 20, True)
    assert read_header("o.jpg", "origin_img", policy) == SourceHeader("JPEG", 50, 100, False)


def test_a_9000x9000_source_is_judged_without_decoding_it(tmp_path: Path) -> None:
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png", optimize=False)  # 10 kB; 81 MB decoded as "1"
    body = _body(origin_img="big.png", modify_origin_img_size="100x100")
    (tmp_path / "body.json").write_text(json.dumps(body))
    # The peak of the child alone: Linux keeps ru_maxrss across fork and exec
    # (this process held the 81 MB picture), so the child resets its own
    # high-water mark (VmHWM) before validating.
    script = (
        "import json, re, sys, time\n"
        "from compositor.cli import main\n"
        "def hwm():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "try:\n"
        "    open('/proc/self/clear_refs', 'w').write('5')\n"
        "except OSError:\n"
        "    print(json.dumps(None)); sys.exit()\n"
        "start = time.perf_counter()\n"
        "rc = main(['validate', sys.argv[1], '--sources', '--json'])\n"
        "print(json.dumps({'rc': rc, 'peak': hwm(), 'seconds': time.perf_counter() - start}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "body.json")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    if lines == [None]:
        pytest.skip("this system cannot reset a process's peak memory (/proc/self/clear_refs)")
    envelope, measured = lines
    print(f"9000x9000 --sources: peak {measured['peak'] / 2**20:.1f} MiB, {measured['seconds'] * 1000:.0f} ms")
    assert (measured["rc"], envelope["code"], envelope["data"]["warnings"]) == (0, 1000, [])
    assert measured["peak"] < 150 * 2**20


def test_remove_bg_makes_an_opaque_foreground_one_that_may_not_cover(
    tmp_path: Path, fg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, envelope = _check(tmp_path, _body(color_code=None, removeBg=True), capsys=capsys)
    assert _warnings(envelope) == [
        (
            "color_code",
            "up to 100% of the canvas may stay transparent (within x 0-100, y 0-100), where origin_img's removed"
            " background shows: set color_code or cover it with the template",
        )
    ]
