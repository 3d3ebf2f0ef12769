"""The PNG writer: rows Up-filtered and deflated by ISA-L, in segments on
every core, joined into one zlib stream.

Every result is a PNG of tens of megabytes, so its writer decides much of a
render's time and of what users store and download. ISA-L (Intel's
storage acceleration library, through PyPI's `isal`) deflates at level 2 in
about the time fpng takes for a whole file, and releases the GIL, so a
canvas cut into segments deflates on both cores at once, as pigz does: each
segment is raw deflate ending on a sync flush (a byte boundary, nothing
final), so the segments joined in order, an empty final block and the
Adler-32 of all the rows are one valid zlib stream. A segment starts without
the previous one's 32 KiB of history, which costs nothing measurable on
segments of megabytes. The Adler-32s of the segments are combined, so no
thread waits for another.

Rows are Up-filtered (each the difference from the row above; the first
row unfiltered), as fpng does. Per-row filter choice (libpng's minimum sum
of absolute differences over the five filters) was measured and does not pay
for its time here (README, Output encoding).

The same writer serves a whole canvas (`encode_png`) and bands that arrive
one at a time (`write_png_bands`, for `--low-memory`): memory holds a few
segments' filtered rows, never a filtered copy of the canvas.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import numpy as np
from isal import isal_zlib

from compositor.threads import render_threads
from compositor.timings import StageTimings

ISAL_LEVEL = 2  # ISA-L's levels are 0 to 3; 2 is near zlib's 4 in size, at a tenth of its time
SEGMENT_BYTES = 4 * 1024 * 1024  # of filtered rows per segment: enough to keep each core busy, few in memory
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE, _FILTER_UP = 0, 2
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" (a hint only)
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final fixed-Huffman block holding nothing
_ADLER_BASE = 65521


def encode_png(pixels: np.ndarray, *, level: int | None = None, timings: StageTimings | None = None) -> bytes:
    """A (height, width, 4) uint8 array of straight RGBA as PNG bytes.
    `level` None: ISA-L; 0-9: zlib at that level."""
    height, width = pixels.shape[:2]
    buffer = io.BytesIO()
    write_png_bands(_segments_of(pixels), width, height, buffer, level=level, timings=timings)
    return buffer.getvalue()


def write_png_bands(
    bands: Iterable[np.ndarray],
    width: int,
    height: int,
    sink: IO[bytes],
    *,
    level: int | None = None,
    timings: StageTimings | None = None,
) -> None:
    """Write (rows, width, 4) uint8 bands of straight RGBA, top to bottom, to
    `sink` as one PNG. A band of more than a segment's rows is cut into
    segments; each is filtered and deflated on a worker thread, and written
    in order as soon as it and those before it are done. `timings` gets the
    filtering and compressing as "encode"."""
    if level is not None and not 0 <= level <= 9:
        raise ValueError(f"png level must be 0-9, got {level}")
    if width < 1 or height < 1:
        raise ValueError(f"a PNG needs at least one row and one column, not {width}x{height}")
    timings = timings if timings is not None else StageTimings()
    sink.write(_SIGNATURE)
    _write_chunk(sink, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    _write_chunk(sink, b"IDAT", _ZLIB_HEADER)
    above: np.ndarray | None = None  # the last row handed out, which the next segment's first row is filtered against
    checksum = zlib.adler32(b"")
    written = 0
    threads = render_threads(4)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png") as pool:
        pending: deque[Future[_Segment]] = deque()
        for band in bands:
            if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, 4):
                raise ValueError(f"a band must be (rows, {width}, 4) uint8, got {band.shape} {band.dtype}")
            written += band.shape[0]
            if written > height:
                raise ValueError(f"the bands hold more than {height} rows")
            rows = band.reshape(band.shape[0], width * 4)
            for segment in _split(rows):
                # The row above is copied: a band's memory may be reused by its maker once handed over.
                pending.append(pool.submit(_deflate_segment, segment, above, level, timings))
                above = segment[-1].copy()
                while len(pending) > threads or (pending and pending[0].done()):
                    checksum = _write_segment(sink, pending.popleft().result(), checksum)
        if written != height:
            raise ValueError(f"the bands hold {written} rows, not {height}")
        while pending:
            checksum = _write_segment(sink, pending.popleft().result(), checksum)
    _write_chunk(sink, b"IDAT", _FINAL_EMPTY_BLOCK + struct.pack(">I", checksum))
    _write_chunk(sink, b"IEND", b"")


def _segments_of(pixels: np.ndarray) -> Iterator[np.ndarray]:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 4:
        raise ValueError(f"expected (height, width, 4) uint8 RGBA, got {pixels.shape} {pixels.dtype}")
    yield np.ascontiguousarray(pixels)


def _split(rows: np.ndarray) -> Iterator[np.ndarray]:
    step = max(1, SEGMENT_BYTES // (rows.shape[1] + 1))
    for start in range(0, rows.shape[0], step):
        yield rows[start : start + step]


def _write_segment(sink: IO[bytes], done: _Segment, checksum: int) -> int:
    sink.write(struct.pack(">I", len(done.data)) + b"IDAT")
    sink.write(done.data)
    sink.write(struct.pack(">I", done.chunk_crc))
    return adler32_combine(checksum, done.adler, done.length)


def up_filtered(rows: np.ndarray, above: np.ndarray | None) -> np.ndarray:
    """The rows, each with its filter byte: Up (the difference from the row
    above, wrapping as uint8 does), except the image's first row, None."""
    filtered = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = _FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    if above is None:
        filtered[0, 0] = _FILTER_NONE
        filtered[0, 1:] = rows[0]
    else:
        np.subtract(rows[0], above, out=filtered[0, 1:])
    return filtered


@dataclass(frozen=True)
class _Segment:
    data: bytes  # raw deflate, ending on a sync flush
    chunk_crc: int  # of the IDAT chunk that carries it
    adler: int  # of the filtered rows
    length: int  # of the filtered rows


_IDAT_CRC = zlib.crc32(b"IDAT")


def _deflate_segment(rows: np.ndarray, above: np.ndarray | None, level: int | None, timings: StageTimings) -> _Segment:
    """A segment's rows filtered, deflated and check-summed, all on the
    worker's thread, so that the writer only writes."""
    with timings.stage("encode"):
        filtered = up_filtered(rows, above).data  # a buffer, as the deflaters type their argument
        if level is None:
            stream = isal_zlib.compressobj(ISAL_LEVEL, isal_zlib.DEFLATED, -15)
            data = stream.compress(filtered) + stream.flush(isal_zlib.Z_SYNC_FLUSH)
        else:
            deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
            data = deflater.compress(filtered) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return _Segment(data, isal_zlib.crc32(data, _IDAT_CRC), isal_zlib.adler32(filtered), filtered.nbytes)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's (zlib's adler32_combine)."""
    remainder = second_length % _ADLER_BASE
    low = first & 0xFFFF
    high = (remainder * low) % _ADLER_BASE
    low += (second & 0xFFFF) + _ADLER_BASE - 1
    high += (first >> 16) + (second >> 16) + _ADLER_BASE - remainder
    low %= _ADLER_BASE
    high %= _ADLER_BASE
    return low | (high << 16)


def _write_chunk(sink: IO[bytes], kind: bytes, data: bytes) -> None:
    sink.write(struct.pack(">I", len(data)) + kind)
    sink.write(data)
    sink.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))
