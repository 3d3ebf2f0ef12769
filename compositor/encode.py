"""Writing the composite: PNG by default, WebP or JPEG on request.

PNG compression dominates a plain render (Pillow's default level spends
about 8 s on a 3840x3840 photo-like canvas here), so the default PNG writer
is our own (`png.py`: Up-filtered rows deflated by ISA-L on both cores).
A zlib level (0-9) picks Pillow's encoder, with its adaptive row filters,
for smaller files at the cost of time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from compositor.png import encode_png, write_png_bands

__all__ = ["FORMATS", "EncodeOptions", "encode", "format_for_path", "write_png_bands"]

FORMATS = ("png", "webp", "jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE, _FILTER_UP = 0, 2
_DEFLATE_THREADS = 2
_ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, "fastest" (a hint only)
_FINAL_EMPTY_BLOCK = b"\x03\x00"  # a final fixed-Huffman block holding nothing
_EXTENSIONS = {".png": "png", ".webp": "webp", ".jpg": "jpeg", ".jpeg": "jpeg"}


@dataclass(frozen=True)
class EncodeOptions:
    format: str = "png"
    png_level: int | None = None  # None: our ISA-L writer; 0-9: zlib through Pillow
    quality: int = 90  # WebP and JPEG

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown output format {self.format!r} (choose from {', '.join(FORMATS)})")
        if self.png_level is not None and not 0 <= self.png_level <= 9:
            raise ValueError(f"png level must be 0-9, got {self.png_level}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1-100, got {self.quality}")


def format_for_path(path: str) -> str | None:
    """The output format a file name implies, or None if its suffix says nothing."""
    for suffix, name in _EXTENSIONS.items():
        if path.lower().endswith(suffix):
            return name
    return None


def encode(image: Image.Image | np.ndarray, options: EncodeOptions | None = None) -> bytes:
    """Encode an RGBA image, or an (height, width, 4) uint8 array of straight
    RGBA (which the PNG writer takes as it is, without a copy of the canvas)."""
    options = options or EncodeOptions()
    if options.format == "png" and options.png_level is None:
        pixels = image if isinstance(image, np.ndarray) else np.asarray(image.convert("RGBA"))
        return encode_png(pixels)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, "RGBA")
    elif image.mode != "RGBA":
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    if options.format == "png":
        image.save(buffer, "PNG", compress_level=options.png_level)
    elif options.format == "webp":
        image.save(buffer, "WEBP", quality=options.quality, method=4)
    else:
        # JPEG has no alpha: what is transparent shows the white behind it.
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        flat.save(buffer, "JPEG", quality=options.quality)
    return buffer.getvalue()
