"""A deliberately plain Pillow implementation of SPEC.md's composite: resize
each whole layer, paste it onto a transparent canvas-sized sheet, and
alpha-composite the sheets. Slow and memory-hungry, but obviously right, so
the engine's shortcuts (visible-part resizing, integer premultiplied blending)
are held against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageOps


def open_layer(path: Path) -> Image.Image:
    image = ImageOps.exif_transpose(Image.open(path))
    return image.convert("RGBA")


def local_path(ref: str, base: Path) -> Path:
    """A body's source as a file: through the fixtures' source map, else relative to `base`."""
    from tests.conftest import SOURCE_MAP

    return SOURCE_MAP.resolve(ref, "source") or base / ref


def reference_render(body: dict[str, Any], base: Path) -> Image.Image:
    width, height = (int(v) for v in body["canvas_size"].split("x"))
    colour = body.get("color_code")
    fill = (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), 255) if colour else (0, 0, 0, 0)
    canvas = Image.new("RGBA", (width, height), fill)
    layers = []
    if body.get("template_url"):
        template = open_layer(local_path(body["template_url"], base))
        size = body.get("modify_template_size")
        layers.append((template, size, body.get("overlay_template_x", 0), body.get("overlay_template_y", 0)))
    layers.append(
        (
            open_layer(local_path(body["origin_img"], base)),
            body["modify_origin_img_size"],
            body["overlay_origin_x"],
            body["overlay_origin_y"],
        )
    )
    for image, size, x, y in layers:
        if size:
            image = image.resize(tuple(int(v) for v in size.split("x")), Image.Resampling.LANCZOS)
        sheet = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        sheet.paste(image, (x, y))
        canvas = Image.alpha_composite(canvas, sheet)
    return canvas
