"""Peer: the straightforward Pillow composite a user would write, with Pillow's
defaults (PNG at zlib level 6). Usage: pillow_defaults.py BODY.json OUT.png"""

import json
import sys

from PIL import Image, ImageOps


def layer(path: str, size: str | None) -> Image.Image:
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGBA")
    if size:
        image = image.resize(tuple(int(v) for v in size.split("x")), Image.Resampling.LANCZOS)
    return image


def main() -> None:
    with open(sys.argv[1]) as handle:
        body = json.load(handle)
    width, height = (int(v) for v in body["canvas_size"].split("x"))
    colour = body.get("color_code")
    fill = (*(int(colour[i : i + 2], 16) for i in (1, 3, 5)), 255) if colour else (0, 0, 0, 0)
    canvas = Image.new("RGBA", (width, height), fill)
    layers = []
    if body.get("template_url"):
        layers.append((body["template_url"], body.get("modify_template_size"),
                       body.get("overlay_template_x", 0), body.get("overlay_template_y", 0)))  # fmt: skip
    layers.append(
        (body["origin_img"], body["modify_origin_img_size"], body["overlay_origin_x"], body["overlay_origin_y"])
    )
    for path, size, x, y in layers:
        sheet = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        sheet.paste(layer(path, size), (x, y))
        canvas = Image.alpha_composite(canvas, sheet)
    canvas.save(sys.argv[2])


if __name__ == "__main__":
    main()
