"""`compositor validate` over a catalogue: one line per body, in order, exit 1 if any is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compositor.cli import main

GOOD = {
    "canvas_size": "100x100",
    "origin_img": "a.png",
    "modify_origin_img_size": "10x10",
    "overlay_origin_x": 0,
    "overlay_origin_y": 0,
}


def _catalogue(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "bodies.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_catalogue_gets_one_json_line_per_body_with_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _catalogue(tmp_path, GOOD, {"id": "bad", "body": {**GOOD, "canvas_size": "0x5"}}, "not json")
    assert main(["validate", str(source), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["id"], line["code"]) for line in lines] == [("000001", 1000), ("bad", 1003), ("000003", 1003)]
    assert lines[1]["data"]["errors"][0]["field"] == "canvas_size"
    assert lines[2]["data"]["errors"][0]["field"] == "body"


def test_a_catalogue_of_valid_bodies_exits_0_and_says_so_in_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _catalogue(tmp_path, GOOD, {**GOOD, "colour": "#ffffff"})
    assert main(["validate", str(source)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "000001  valid (1000)",
        "000002  valid (1000)",
        "  warning colour: is not a field of this API and is ignored",
    ]
    assert "2 bodies: 2 valid, 0 invalid" in err


def test_strict_makes_a_warning_refuse_its_body(tmp_path: Path) -> None:
    source = _catalogue(tmp_path, {**GOOD, "webhookUrl": "http://127.0.0.1:9/hook", "colour": "#ffffff"})
    assert main(["validate", str(source), "--strict"]) == 1


def test_a_folder_is_read_as_batch_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "b.json").write_text(json.dumps({**GOOD, "overlay_origin_x": 1.5}))
    (tmp_path / "a.json").write_text(json.dumps(GOOD))
    assert main(["validate", str(tmp_path), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["id"], line["code"]) for line in lines] == [("a", 1000), ("b", 1003)]


def test_a_catalogue_that_cannot_be_read_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.jsonl" in err[0]
