"""Peer: libvips through pyvips: Lanczos-3 resize on premultiplied alpha,
composite2 "over" at signed offsets, pngsave with libvips' defaults (or
--filter for row filters). Usage: vips_composite.py BODY.json OUT.png [--filter]"""

import json
import sys

import pyvips


def layer(path: str, size: str | None) -> pyvips.Image:
    image = pyvips.Image.new_from_file(path).autorot()
    if image.bands == 3:
        image = image.bandjoin(255)
    if size:
        width, height = (int(v) for v in size.split("x"))
        image = image.premultiply().resize(width / image.width, vscale=height / image.height, kernel="lanczos3")
        image = image.unpremultiply().cast("uchar")
        if (image.width, image.height) != (width, height):  # resize rounds; pin the exact size
            image = image.gravity("north-west", width, height, extend="copy")
    return image


def main() -> None:
    with open(sys.argv[1]) as handle:
        body = json.load(handle)
    width, height = (int(v) for v in body["canvas_size"].split("x"))
    colour = body.get("color_code")
    fill = [int(colour[i : i + 2], 16) for i in (1, 3, 5)] + [255] if colour else [0, 0, 0, 0]
    canvas = (pyvips.Image.black(width, height, bands=4) + fill).cast("uchar").copy(interpretation="srgb")
    if body.get("template_url"):
        template = layer(body["template_url"], body.get("modify_template_size"))
        canvas = canvas.composite2(
            template, "over", x=body.get("overlay_template_x", 0), y=body.get("overlay_template_y", 0)
        )
    foreground = layer(body["origin_img"], body["modify_origin_img_size"])
    canvas = canvas.composite2(foreground, "over", x=body["overlay_origin_x"], y=body["overlay_origin_y"])
    options = {"filter": "all"} if "--filter" in sys.argv else {}
    canvas.cast("uchar").pngsave(sys.argv[2], **options)


if __name__ == "__main__":
    main()
