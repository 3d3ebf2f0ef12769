"""Fetching and decoding the images a request names.

A source is an http(s) URL, a `file://` URL, a `data:` URI or a local path.
Decoding normalises every Pillow mode to RGB (opaque) or RGBA, applies the
EXIF orientation and refuses decompression bombs before any pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from compositor.errors import SourceError

DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # JPEG covers MPO (camera JPEGs)
_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_DATA_HEADER = re.compile(r"data:([a-zA-Z0-9!#$&^_.+-]+/[a-zA-Z0-9!#$&^_.+-]+)?((?:;[^,;]+)*),", re.DOTALL)


@dataclass(frozen=True)
class SourcePolicy:
    """What a render may read, and how much.

    `file_roots` None means any local file (the CLI, on the user's own
    machine); an empty tuple means none (a server facing other people)."""

    base_dir: Path | None = None
    allow_http: bool = True
    file_roots: tuple[Path, ...] | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000


def check_source_reference(ref: str) -> str | None:
    """A static check of a source string: the problem, or None if it is usable."""
    if ref.startswith("data:"):
        return None if _DATA_HEADER.match(ref) else "is not a valid data: URI (expected data:[type][;base64],...)"
    scheme = _SCHEME.match(ref)
    if scheme is None or len(scheme.group(1)) == 1:  # "C:\..." is a path
        return None
    name = scheme.group(1).lower()
    if name in ("http", "https"):
        return None if urlsplit(ref).hostname else "is an http(s) URL without a host"
    if name == "file":
        return None if urlsplit(ref).path else "is a file: URL without a path"
    return f"has an unsupported scheme {name!r} (use http, https, file, data or a path)"


def read_source(ref: str, field: str, policy: SourcePolicy) -> bytes:
    """The raw bytes of a source, within the policy's limits."""
    problem = check_source_reference(ref)
    if problem is not None:
        raise SourceError(field, problem)
    if ref.startswith("data:"):
        return _read_data_uri(ref, field, policy)
    scheme = _SCHEME.match(ref)
    name = scheme.group(1).lower() if scheme and len(scheme.group(1)) > 1 else None
    if name in ("http", "https"):
        return _read_http(ref, field, policy)
    path = Path(unquote(urlsplit(ref).path)) if name == "file" else Path(ref)
    return _read_file(path, field, policy)


def load_image(ref: str, field: str, policy: SourcePolicy) -> Image.Image:
    return decode_image(read_source(ref, field, policy), field, max_pixels=policy.max_pixels)


def decode_image(data: bytes, field: str, *, max_pixels: int) -> Image.Image:
    """Decode to an oriented RGB or RGBA image (the first frame of an animation)."""
    with warnings.catch_warnings():
        # Our own pixel limit below replaces Pillow's global one.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
        except UnidentifiedImageError:
            raise SourceError(field, "is not an image in a supported format (PNG, JPEG, WebP, GIF)") from None
        except Image.DecompressionBombError as exc:
            raise SourceError(field, f"is a decompression bomb: {exc}") from None
        width, height = image.size
        if width * height > max_pixels:
            raise SourceError(
                field, f"is a decompression bomb: {width}x{height} exceeds the limit of {max_pixels} pixels"
            )
        try:
            image.seek(0)
            image.load()
            # In place: without an orientation to apply, the default would
            # still return a copy (20 ms for a 2400x2672 photo here).
            ImageOps.exif_transpose(image, in_place=True)
            return to_layer_mode(image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise SourceError(field, f"could not be decoded: {exc}") from None


def to_layer_mode(image: Image.Image) -> Image.Image:
    """RGB for images without any transparency, RGBA otherwise."""
    mode = image.mode
    if mode in ("RGB", "RGBA"):
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_8bit(image), "L").convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa") or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        return image.convert("RGBA")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> np.ndarray:
    values = np.asarray(image)
    if image.mode == "F":
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    # 16-bit grey: map 0..65535 onto 0..255 the way a 16-to-8 bit reduction does.
    return np.clip((values.astype(np.int64) + 128) // 257, 0, 255).astype(np.uint8)


def _read_data_uri(ref: str, field: str, policy: SourcePolicy) -> bytes:
    header = _DATA_HEADER.match(ref)
    assert header is not None
    payload = ref[header.end() :]
    if "base64" in header.group(2).lower().split(";"):
        try:
            data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
        except (binascii.Error, ValueError):
            raise SourceError(field, "is a data: URI whose base64 payload is malformed") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > policy.max_bytes:
        raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
    return data


def _read_file(path: Path, field: str, policy: SourcePolicy) -> bytes:
    if not path.is_absolute() and policy.base_dir is not None:
        path = policy.base_dir / path
    path = path.resolve()
    if policy.file_roots is not None and not any(path.is_relative_to(root.resolve()) for root in policy.file_roots):
        raise SourceError(field, f"names a local file ({path}) outside the directories this service may read")
    try:
        size = path.stat().st_size
        if size > policy.max_bytes:
            raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise SourceError(field, f"names a file that does not exist: {path}") from None
    except IsADirectoryError:
        raise SourceError(field, f"names a directory, not an image file: {path}") from None
    except PermissionError:
        raise SourceError(field, f"names a file that cannot be read: {path}") from None


def _read_http(url: str, field: str, policy: SourcePolicy) -> bytes:
    if not policy.allow_http:
        raise SourceError(field, "is an http(s) URL, which this service does not fetch")
    import httpx  # imported here: rendering from local files must not pay for it

    timeout = httpx.Timeout(policy.read_timeout, connect=policy.connect_timeout)
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise SourceError(field, f"could not be fetched: HTTP {response.status_code} from {url}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
            chunks = []
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received > policy.max_bytes:
                    raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise SourceError(field, f"could not be fetched: timed out ({url})") from None
    except httpx.HTTPError as exc:
        raise SourceError(field, f"could not be fetched: {exc} ({url})") from None
