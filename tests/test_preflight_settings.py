"""Pre-flight's thresholds are settings: a flag, a COMPOSITOR_* variable and
(for serve) a config key each, with the documented defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from compositor.cli import _build_parser, main
from compositor.mirror import config
from compositor.mirror.settings import BY_KEY, THRESHOLDS
from compositor.preflight import PreflightThresholds

SECRET = "0123456789abcdef"


@pytest.fixture
def enlarged(tmp_path: Path) -> Path:
    """A 100x100 picture drawn at 300x300 (3x) on a white canvas: only the enlargement warns."""
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    body = {
        "canvas_size": "300x300",
        "color_code": "#ffffff",
        "origin_img": "a.png",
        "modify_origin_img_size": "300x300",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
    }
    path = tmp_path / "body.json"
    path.write_text(json.dumps(body))
    return path


def _warned(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> list[str]:
    assert main(["validate", str(path), "--sources", "--json", *flags]) == 0
    envelope: dict[str, Any] = json.loads(capsys.readouterr().out)
    return [warning["message"] for warning in envelope["data"]["warnings"]]


def test_the_defaults_are_the_documented_ones() -> None:
    defaults = PreflightThresholds()
    for key, name, default, _ in THRESHOLDS:
        assert getattr(defaults, name) == default
        assert float(BY_KEY[key].default) == default


def test_each_threshold_has_its_flag_on_validate_batch_and_serve() -> None:
    parser = _build_parser()
    for key, *_ in THRESHOLDS:
        flag = BY_KEY[key].flag
        assert flag == f"--{key.replace('_', '-')}"
    helps = {command: _help_of(parser, command) for command in ("validate", "batch", "serve")}
    for key, *_ in THRESHOLDS:
        for command, text in helps.items():
            assert BY_KEY[key].flag in text, f"{command} has no {BY_KEY[key].flag}"


def _help_of(parser: Any, command: str) -> str:
    for action in parser._subparsers._group_actions:
        if command in action.choices:
            return str(action.choices[command].format_help())
    raise AssertionError(command)


def test_the_default_enlargement_threshold_warns_at_3x(enlarged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert any("enlarges 100x100 to 300x300" in message for message in _warned(enlarged, capsys))


def test_a_flag_raises_the_threshold(enlarged: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _warned(enlarged, capsys, "--warn-enlargement", "3") == []


def test_the_variable_raises_the_threshold(
    enlarged: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPOSITOR_WARN_ENLARGEMENT", "3.5")
    assert _warned(enlarged, capsys) == []


def test_the_flag_beats_the_variable(
    enlarged: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPOSITOR_WARN_ENLARGEMENT", "3.5")
    assert len(_warned(enlarged, capsys, "--warn-enlargement", "2")) == 1


@pytest.mark.parametrize(("flag", "value"), [("--warn-cut-off", "1.5"), ("--warn-aspect-change", "-1")])
def test_a_threshold_out_of_range_is_refused_naming_it(
    enlarged: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    assert main(["validate", str(enlarged), "--sources", flag, value]) == 2
    assert flag in capsys.readouterr().err


def test_a_variable_that_is_not_a_number_is_refused_naming_it(
    enlarged: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPOSITOR_WARN_CUT_OFF", "half")
    assert main(["validate", str(enlarged), "--sources"]) == 2
    assert "COMPOSITOR_WARN_CUT_OFF" in capsys.readouterr().err


def test_serve_reads_them_from_flag_variable_and_config_file(tmp_path: Path) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text("warn_cut_off = 0.75\nwarn_enlargement = 4.0\n")
    loaded = config.load(
        {"config": file, "data_dir": tmp_path, "client": [f"c:{SECRET}"], "warn_enlargement": 3.0},
        environ={"COMPOSITOR_WARN_ASPECT_CHANGE": "0.1"},
    )
    assert loaded.settings.preflight == PreflightThresholds(
        max_aspect_change=0.1, max_enlargement=3.0, max_cut_off=0.75
    )


def test_serve_refuses_a_bad_threshold_in_its_config_file(tmp_path: Path) -> None:
    file = tmp_path / "mirror.toml"
    file.write_text('warn_cut_off = "most"\n')
    with pytest.raises(config.ConfigError, match="warn_cut_off in the config file"):
        config.load({"config": file, "data_dir": tmp_path, "client": [f"c:{SECRET}"]}, environ={})
