"""`compositor batch` reports each item's warnings (the body's own and pre-flight's,
from the sources' headers, read on the worker that renders it) in report.jsonl, and
`--strict` refuses an item that has any (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from compositor.cli import main
from tests.test_batch import local_cluster  # noqa: F401  # the module's LocalCluster, reused

SIDE = 40


@pytest.fixture
def picture(tmp_path: Path) -> Path:
    """A 40x40 opaque PNG beside the input (bodies name it relatively)."""
    path = tmp_path / "a.png"
    Image.new("RGB", (SIDE, SIDE), (200, 30, 60)).save(path)
    return path


def body(size: str = f"{SIDE}x{SIDE}", canvas: str = "120x120", **overrides: Any) -> dict[str, Any]:
    """The picture drawn at `size` on a white canvas: nothing left transparent, nothing cut off."""
    return {
        "canvas_size": canvas,
        "color_code": "#ffffff",
        "origin_img": "a.png",
        "modify_origin_img_size": size,
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        **overrides,
    }


CLEAN = body()
STRETCHED = body("80x40")  # 2x wider for its height; 2x wide is not over the 2x enlargement threshold
ENLARGED = body("120x120")  # 3x, its proportions kept


def write_input(tmp_path: Path, items: dict[str, dict[str, Any]]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": key, "body": value}) + "\n" for key, value in items.items()))
    return path


def report(outdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (outdir / "report.jsonl").read_text().splitlines()]


def by_id(outdir: Path) -> dict[str, dict[str, Any]]:
    return {line["id"]: line for line in report(outdir)}


def run_batch(source: Path, out: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["batch", str(source), "-o", str(out), "--workers", "1", *flags])
    return code, capsys.readouterr().err


def messages(line: dict[str, Any], key: str = "warnings") -> list[tuple[str, str]]:
    return [(problem["field"], problem["message"]) for problem in line[key]]


def test_a_stretched_item_has_its_warning_and_a_clean_one_none(
    tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path, {"clean": CLEAN, "stretched": STRETCHED, "unknown": body(foo=1)})
    code, err = run_batch(source, tmp_path / "out", capsys)
    assert code == 0, err
    lines = by_id(tmp_path / "out")
    assert all(line["status"] == "done" and line["errors"] == [] for line in lines.values())
    assert lines["clean"]["warnings"] == []
    [(field, message)] = messages(lines["stretched"])
    assert field == "modify_origin_img_size" and "stretches 40x40 to 80x40" in message
    # validate's own warnings come along
    assert messages(lines["unknown"]) == [("foo", "is not a field of this API and is ignored")]
    assert (tmp_path / "out" / "stretched.png").is_file()  # warned, and rendered all the same
    assert "2 with warnings" in err.strip().splitlines()[-1]


def test_every_line_has_warnings_even_an_item_that_is_not_a_body(
    tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        "not JSON\n"
        + json.dumps({"id": "invalid", "body": body(canvas="12", foo=1)})
        + "\n"
        + json.dumps({"id": "missing", "body": body(origin_img="missing.png")})
        + "\n"
    )
    code, err = run_batch(source, tmp_path / "out", capsys)
    assert code == 1, err
    lines = by_id(tmp_path / "out")
    assert lines["000001"]["warnings"] == [] and lines["000001"]["code"] == 1003
    # a body refused for its parameters still says what it would have been warned of
    assert lines["invalid"]["code"] == 1003 and messages(lines["invalid"])[0][0] == "foo"
    # an unreadable source is the render's 1108, as before: pre-flight adds nothing of its own
    assert lines["missing"]["code"] == 1108 and lines["missing"]["warnings"] == []
    assert [problem["field"] for problem in lines["missing"]["errors"]] == ["origin_img"]


def test_strict_refuses_the_warned_item_and_renders_the_clean_one(
    tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_input(tmp_path, {"clean": CLEAN, "stretched": STRETCHED})
    out = tmp_path / "out"
    code, err = run_batch(source, out, capsys, "--strict")
    assert code == 1, err
    lines = by_id(out)
    assert lines["clean"]["status"] == "done" and lines["clean"]["warnings"] == []
    refused = lines["stretched"]
    assert refused["status"] == "failed" and refused["code"] == 1003 and refused["output"] is None
    assert messages(refused, "errors") == messages(refused) != []  # the warnings, as errors
    assert not (out / "stretched.png").exists()
    last = err.strip().splitlines()[-1]
    assert "1 done, 1 failed" in last and "1 with warnings" in last


def test_strict_refuses_a_body_level_warning_too_but_not_a_missing_webhook(
    tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch has no webhook: --strict turns warnings into errors, it does not ask for webhookUrl."""
    source = write_input(tmp_path, {"clean": CLEAN, "unknown": body(foo=1)})
    code, err = run_batch(source, tmp_path / "out", capsys, "--strict")
    assert code == 1, err
    lines = by_id(tmp_path / "out")
    assert lines["clean"]["status"] == "done"
    assert lines["unknown"]["code"] == 1003 and messages(lines["unknown"], "errors")[0][0] == "foo"


def test_the_thresholds_flags_change_the_outcome(
    tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_input(tmp_path, {"enlarged": ENLARGED})
    code, err = run_batch(source, tmp_path / "warned", capsys, "--strict")
    assert code == 1, err
    [(field, message)] = messages(by_id(tmp_path / "warned")["enlarged"])
    assert field == "modify_origin_img_size" and "enlarges 40x40 to 120x120 (3.00x)" in message

    code, err = run_batch(source, tmp_path / "flag", capsys, "--strict", "--warn-enlargement", "10")
    assert code == 0, err
    assert by_id(tmp_path / "flag")["enlarged"]["warnings"] == []
    assert "0 with warnings" in err

    monkeypatch.setenv("COMPOSITOR_WARN_ENLARGEMENT", "10")
    code, err = run_batch(source, tmp_path / "variable", capsys, "--strict")
    assert code == 0, err
    assert by_id(tmp_path / "variable")["enlarged"]["status"] == "done"


def test_resume_after_a_run_with_warnings(tmp_path: Path, picture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_input(tmp_path, {"clean": CLEAN, "stretched": STRETCHED, "old": CLEAN})
    out = tmp_path / "out"
    out.mkdir()
    # a report written before lines had `warnings`, for an item whose output exists
    Image.new("RGB", (120, 120)).save(out / "old.png")
    old_line = {"id": "old", "status": "done", "output": str(out / "old.png"), "seconds": 0.01, "code": 1000}
    (out / "report.jsonl").write_text(json.dumps({**old_line, "errors": []}) + "\n")

    code, err = run_batch(source, out, capsys, "--strict", "--resume")
    assert code == 1, err
    first = report(out)
    assert first[0] == {**old_line, "errors": []}  # kept as it was
    assert {line["id"]: line["status"] for line in first[1:]} == {
        "clean": "done",
        "stretched": "failed",
        "old": "skipped",
    }
    assert next(line for line in first[1:] if line["id"] == "old")["warnings"] == []

    code, err = run_batch(source, out, capsys, "--resume")  # without --strict: the refused item renders
    assert code == 0, err
    second = {line["id"]: line for line in report(out)[len(first) :]}
    assert second["clean"]["status"] == second["old"]["status"] == "skipped"
    assert second["stretched"]["status"] == "done" and messages(second["stretched"])[0][0] == "modify_origin_img_size"
    assert (out / "stretched.png").is_file()
    assert "1 with warnings" in err.strip().splitlines()[-1]


def test_warnings_are_read_on_the_worker_not_the_client(tmp_path: Path, picture: Path) -> None:
    """The client submits bodies and writes answers: the worker's answer carries the warnings."""
    from compositor.batch import render_item

    base = str(tmp_path)
    outcome = render_item(STRETCHED, base, None, "u2netp", {"max_enlargement": 2.0}, True)
    assert outcome.png is None and outcome.code == 1003 and outcome.errors == outcome.warnings != []
    outcome = render_item(STRETCHED, base, None, "u2netp", {"max_aspect_change": 1.5})
    assert outcome.png is not None and outcome.warnings == []
    outcome = render_item(STRETCHED, base, None, "u2netp")  # the defaults
    assert outcome.png is not None and [w["field"] for w in outcome.warnings] == ["modify_origin_img_size"]


def test_the_warnings_on_a_dask_cluster(
    tmp_path: Path,
    picture: Path,
    local_cluster: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = write_input(tmp_path, {"clean": CLEAN, "stretched": STRETCHED})
    out = tmp_path / "out"
    code = main(["batch", str(source), "-o", str(out), "--scheduler", local_cluster.scheduler_address, "--strict"])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = by_id(out)
    assert lines["clean"]["status"] == "done" and lines["clean"]["warnings"] == []
    assert lines["stretched"]["status"] == "failed" and lines["stretched"]["code"] == 1003
    assert messages(lines["stretched"])[0][0] == "modify_origin_img_size"
