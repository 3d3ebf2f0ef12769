"""Fetching and decoding the images a request names.

A source is an http(s) URL, an `s3://` URL (where the policy reads object
storage), a `file://` URL, a `data:` URI or a local path.
Decoding normalises every Pillow mode to RGB (opaque) or RGBA, applies the
EXIF orientation and refuses decompression bombs before any pixel is decoded.

`read_prefix` reads only a source's first bytes, under the same policy as
`read_source` (pre-flight reads headers that way), and `open_image` opens
bytes lazily, the header only, with the errors render gives.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from dataclasses import field as _field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from compositor.budget import MemoryBudget
from compositor.errors import CompositorError, SourceError
from compositor.references import DATA_HEADER as _DATA_HEADER
from compositor.references import SCHEME as _SCHEME
from compositor.references import check_source_reference
from compositor.sourcemap import SourceMap

if TYPE_CHECKING:
    pass

DECODABLE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # JPEG covers MPO (camera JPEGs)


@dataclass(frozen=True)
class SourcePolicy:
    """What a render may read, and how much.

    `file_roots` None means any local file (the CLI, on the user's own
    machine); an empty tuple means none (a server facing other people)."""

    base_dir: Path | None = None
    allow_http: bool = True
    file_roots: tuple[Path, ...] | None = None
    deadline_s: float = 30.0  # for a whole download: connect, every read, redirects
    max_bytes: int = 64 * 1024 * 1024  # of the source as decompressed
    max_pixels: int = 100_000_000
    allow_private: bool = True  # http(s) to loopback, private and link-local addresses
    source_map: SourceMap | None = None  # URLs read from local files instead (never fetched)
    local_only: bool = False  # http(s) to this machine only (the mock: nothing leaves it)
    # Whether an http(s) source on a loopback, private or link-local address
    # (at any redirect) that fails says why ("HTTP 404", "is not an image", ...),
    # or gets the one reason that a closed port gets. None: only where
    # `file_roots` is None (the user's own machine); a server's callers must not
    # learn which ports of its network answer, and with what.
    private_causes: bool | None = None
    # s3:// sources, read through `compositor.storage` with the credentials of whoever runs this (AWS_* variables,
    # profiles, a role): off unless asked for (render, validate and batch ask; the mirror only where its
    # allow_object_storage setting says), since a body would otherwise read its operator's buckets.
    object_storage: bool = False
    storage_options: Mapping[str, Any] = _field(default_factory=dict)  # s3fs's (endpoint_url, ...), never keys

    @property
    def tells_private_causes(self) -> bool:
        return self.file_roots is None if self.private_causes is None else self.private_causes

    @property
    def unreachable(self) -> str:
        """The reason of every http(s) source that cannot be had without saying why."""
        return f"could not be fetched (the connection failed, or no whole answer came within {self.deadline_s:g} s)"


class SourcePrefix(NamedTuple):
    """A source's first bytes (`read_prefix`)."""

    data: bytes
    complete: bool  # `data` is the whole source
    hidden: bool  # a failure over it must be `policy.unreachable` (a private address that does not tell)


class IncompleteSource(Exception):
    """`open_image` could not tell what a prefix is: more of the source is needed."""


def read_source(ref: str, field: str, policy: SourcePolicy) -> bytes:
    """The raw bytes of a source, within the policy's limits."""
    return _read(ref, field, policy).data


def read_prefix(ref: str, field: str, policy: SourcePolicy, size: int) -> SourcePrefix:
    """At most the first `size` bytes of a source, read under the same policy
    as `read_source` (maps, roots, the byte limit, http's address rules and
    deadline), saying whether they are all of it. A source over the byte
    limit fails here too where its size is known before reading it all (a
    local file; an http answer that announces its length); a `data:` URI is
    decoded whole (it is in memory already). An http(s) source is asked for
    a range, and its answer, 206 or 200, is read no further than `size`: the
    connection is then closed. From `size` = the byte limit on, it is
    `read_source` (the whole source, or the limit's error)."""
    return _read(ref, field, policy, max(size, 1))


def _read(ref: str, field: str, policy: SourcePolicy, size: int | None = None) -> SourcePrefix:
    """The first `size` bytes (None: all) of a source (see `read_prefix`)."""
    if size is not None and size >= policy.max_bytes:
        size = None
    if policy.source_map is not None:
        mapped = policy.source_map.resolve(ref, field)
        if mapped is not None:  # the map's own choice of file: no roots apply
            return _read_file(mapped, field, replace(policy, file_roots=None, base_dir=None), size)
    problem = check_source_reference(ref)
    if problem is not None:
        raise SourceError(field, problem)
    if ref.startswith("data:"):
        data = _read_data_uri(ref, field, policy)
        if size is None or len(data) <= size:
            return SourcePrefix(data, True, False)
        return SourcePrefix(data[:size], False, False)
    scheme = _SCHEME.match(ref)
    name = scheme.group(1).lower() if scheme and len(scheme.group(1)) > 1 else None
    if name in ("http", "https"):
        return _read_http(ref, field, policy, size)
    if name == "s3":
        return _read_object(ref, field, policy, size)
    path = Path(unquote(urlsplit(ref).path)) if name == "file" else Path(ref)
    return _read_file(path, field, policy, size)


def load_image(ref: str, field: str, policy: SourcePolicy, budget: MemoryBudget | None = None) -> Image.Image:
    data, _, hidden = _read(ref, field, policy)
    try:
        return decode_image(data, field, max_pixels=policy.max_pixels, budget=budget)
    except CompositorError:  # not an image, a bomb, over the budget: from a private address, all one reason
        if hidden:
            raise SourceError(field, policy.unreachable) from None
        raise


def open_image(data: bytes, field: str, *, max_pixels: int, complete: bool = True) -> Image.Image:
    """`data` opened lazily: its header read, no pixel decoded. `SourceError`
    for what is not an image, is damaged or is over `max_pixels`. When
    `data` is only a prefix of the source (`complete` False), what Pillow
    cannot make out of it is `IncompleteSource`, never a judgment: only the
    whole source may be found unreadable (a bomb is one from its header)."""
    with warnings.catch_warnings():
        # Our own pixel limit below replaces Pillow's global one.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise SourceError(field, f"is a decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            if not complete:
                raise IncompleteSource(field) from None
            raise SourceError(field, "is not an image in a supported format (PNG, JPEG, WebP, GIF)") from None
        except DECODE_FAILURES as exc:  # a damaged header (or a text chunk bomb) is a bad source
            if not complete:
                raise IncompleteSource(field) from None
            raise SourceError(field, f"could not be decoded: {_reason(exc)}") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise SourceError(field, f"is a decompression bomb: {width}x{height} exceeds the limit of {max_pixels} pixels")
    return image


def decode_image(data: bytes, field: str, *, max_pixels: int, budget: MemoryBudget | None = None) -> Image.Image:
    """Decode to an oriented RGB or RGBA image (the first frame of an animation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = open_image(data, field, max_pixels=max_pixels)
        if budget is not None:
            budget.reserve(len(data) + decoded_bytes(image.width, image.height, image.mode), field)
        try:
            image.seek(0)
            image.load()
            # In place: without an orientation to apply, the default would
            # still return a copy (20 ms for a 2400x2672 photo here).
            ImageOps.exif_transpose(image, in_place=True)
            return to_layer_mode(image)
        except DECODE_FAILURES as exc:
            raise SourceError(field, f"could not be decoded: {_reason(exc)}") from None


# What Pillow's decoders raise for damaged input. MemoryError is not here:
# that is the machine's problem, not the source's.
DECODE_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    zlib.error,
)


def _reason(exc: BaseException) -> str:
    """The first line of a decoder's message, or its exception's name when it has none."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Memory one source takes while decoded and normalised: its own mode's
    pixels, the RGBA copy it becomes, and removeBg's or the resizer's
    working copy of that (the largest of the transient buffers)."""
    per_pixel = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}.get(mode, 4)
    return width * height * (per_pixel + 8)


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
    # 16-bit grey: map 0..65535 onto 0..255 the way a 16-to-8 bit reduction
    # does, a band of rows at a time: a 10000x10000 image as int64 would be 800 MB.
    out = np.empty(values.shape, np.uint8)
    for top in range(0, values.shape[0], 256):
        rows = values[top : top + 256].astype(np.uint32)
        out[top : top + 256] = np.minimum((rows + 128) // 257, 255)
    return out


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


def _read_file(path: Path, field: str, policy: SourcePolicy, size: int | None = None) -> SourcePrefix:
    """A regular file's bytes, at most `max_bytes` of them (or its first
    `size`). The size is counted while reading (a device says 0), and
    nothing that could block (a FIFO) or never end (/dev/zero) is read.
    Messages name no path: a server's layout is nobody else's business."""
    if not path.is_absolute() and policy.base_dir is not None:
        path = policy.base_dir / path
    try:
        path = path.resolve()
    except (OSError, RuntimeError, ValueError):
        raise SourceError(field, "names a local file that cannot be read") from None
    if policy.file_roots is not None and not any(path.is_relative_to(root.resolve()) for root in policy.file_roots):
        raise SourceError(field, "names a local file outside the directories this service may read")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise SourceError(field, "names a local file that does not exist") from None
    except IsADirectoryError:
        raise SourceError(field, "names a directory, not an image file") from None
    except (OSError, ValueError):
        raise SourceError(field, "names a local file that cannot be read") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        if stat.S_ISDIR(mode):
            raise SourceError(field, "names a directory, not an image file")
        raise SourceError(field, "names something that is not a regular file (a device or a FIFO)")
    with os.fdopen(descriptor, "rb") as file:
        try:
            if size is not None and os.fstat(file.fileno()).st_size > policy.max_bytes:
                raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
            data = file.read((policy.max_bytes if size is None else size) + 1)
        except OSError:
            raise SourceError(field, "names a local file that cannot be read") from None
    if size is not None:
        return SourcePrefix(data[:size], len(data) <= size, False)
    if len(data) > policy.max_bytes:
        raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
    return SourcePrefix(data, True, False)


def _read_http(url: str, field: str, policy: SourcePolicy, size: int | None = None) -> SourcePrefix:
    """The body (or its first `size` bytes), and whether it must fail
    without saying why (see `SourcePrefix.hidden`). A failure after any hop
    to a private address is `policy.unreachable`, whatever the cause, where
    the policy does not tell: else a 404, a reset and a closed port would map
    a server's own network. A private address refused before any connection
    keeps its own reason."""
    if not policy.allow_http:
        raise SourceError(field, "is an http(s) URL, which this service does not fetch")
    # Local files must not pay for httpx.
    from compositor.outbound import OutboundError, OutboundPolicy, Unreachable, fetch

    network = OutboundPolicy(
        deadline_s=policy.deadline_s,
        max_bytes=policy.max_bytes,
        allow_private=policy.allow_private,
        local_only=policy.local_only,
    )
    try:
        download = fetch(url, network, prefix=size)
    except OutboundError as exc:
        # A refused destination is the URL's own fault, unless a private address redirected there.
        hidden = isinstance(exc, Unreachable) or (exc.private and not policy.tells_private_causes)
        raise SourceError(field, policy.unreachable if hidden else exc.reason) from None
    return SourcePrefix(download.data, download.complete, download.private and not policy.tells_private_causes)


def _read_object(url: str, field: str, policy: SourcePolicy, size: int | None = None) -> SourcePrefix:
    """An s3:// object's bytes (or its first `size`): its size asked first (a
    HEAD), so that one over the byte limit is refused unread, then one GET of
    the range wanted. A failure is one line naming the URL (`StorageError`),
    never a credential."""
    if not policy.object_storage:
        raise SourceError(field, "is an s3:// URL, which this service does not read (object storage is off)")
    # Only an s3:// source pays for fsspec and s3fs.
    from compositor.storage import StorageError, open_location

    folder, _, name = url.rpartition("/")  # references.check_source_reference: a bucket, and a key of whole parts
    try:
        place = open_location(folder, policy.storage_options)
        total = place.size_of(name)
        if total > policy.max_bytes:
            raise SourceError(field, f"is larger than the limit of {policy.max_bytes} bytes")
        data = place.read_prefix(name, total if size is None else min(size, total))
    except StorageError as exc:
        raise SourceError(field, str(exc)) from None
    return SourcePrefix(data, size is None or total <= size, False)


def sniff_type(data: bytes) -> str:
    """The MIME type an image's first bytes announce."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    return "application/octet-stream"
