"""Make the fixture images and request bodies under fixtures/.

Deterministic (fixed seeds), so running it again rewrites identical inputs.
The images are small; the request bodies keep the documented sizes, so the
engine scales them up exactly as it would scale real uploads.

    python scripts/make_fixtures.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent / "fixtures"
IMAGES = ROOT / "images"
REQUESTS = ROOT / "requests"


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth light, a few soft shapes and sensor-like noise: the statistics
    of a photograph, which is what resizers and PNG encoders are sensitive to."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack(
        [
            90 + 120 * (1 - y / height) + 20 * np.sin(x / 97.0),
            130 + 90 * (1 - y / height) + 15 * np.cos(y / 61.0),
            200 - 60 * (y / height) + 10 * np.sin((x + y) / 43.0),
        ],
        axis=-1,
    )
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(14):
        cx, cy = rng.integers(0, width), rng.integers(height // 3, height)
        r = int(rng.integers(width // 20, width // 6))
        colour = tuple(int(c) for c in rng.integers(20, 200, 3))
        draw.ellipse((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(2.5))
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 4.0, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def soft_foreground(width: int, height: int, seed: int) -> Image.Image:
    """A subject with a feathered edge. Its transparent pixels are black, as
    many real cut-outs are: a resize without premultiplied alpha would bleed
    that black into the edge (the dark fringe the golden tests watch for)."""
    subject = photo_like(width, height, seed).convert("RGBA")
    warm = np.asarray(subject).astype(np.float32)
    warm[..., 0] = np.clip(warm[..., 0] * 1.3 + 40, 0, 255)
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    draw.ellipse((width * 0.22, height * 0.05, width * 0.78, height * 0.45), fill=255)  # head
    draw.rounded_rectangle((width * 0.1, height * 0.38, width * 0.9, height * 0.98), radius=width // 6, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(width / 90))
    alpha = np.asarray(mask)
    rgba = warm.astype(np.uint8)
    rgba[..., 3] = alpha
    rgba[alpha == 0, :3] = 0
    return Image.fromarray(rgba, "RGBA")


def exif_rotated(width: int, height: int) -> Image.Image:
    """An arrow pointing up once EXIF orientation 6 (rotate 90° clockwise on
    display) is applied; stored sideways, pointing left."""
    upright = Image.new("RGB", (width, height), (240, 240, 240))
    draw = ImageDraw.Draw(upright)
    draw.polygon(
        [(width / 2, height * 0.08), (width * 0.85, height * 0.45), (width * 0.15, height * 0.45)], fill=(200, 30, 30)
    )
    draw.rectangle((width * 0.38, height * 0.45, width * 0.62, height * 0.92), fill=(30, 30, 200))
    draw.rectangle((0, 0, width * 0.12, height * 0.12), fill=(20, 160, 20))  # top-left marker
    return upright.transpose(Image.Transpose.ROTATE_90)  # stored form; orientation 6 undoes it


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    REQUESTS.mkdir(parents=True, exist_ok=True)

    photo_like(1200, 1336, seed=1).save(IMAGES / "template.jpg", quality=90)
    soft_foreground(960, 1200, seed=2).save(IMAGES / "foreground.png", optimize=True)
    stored = exif_rotated(480, 640)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(IMAGES / "exif-orientation-6.jpg", quality=92, exif=exif.tobytes())

    # The upstream docs' four example bodies, verbatim (their images are not
    # reachable offline: source-map.json maps their URLs to the stand-ins above).
    bodies = {
        "example-1-template-only": {
            "canvas_size": "3840x3840",
            "template_url": "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png",
            "modify_template_size": "3830x3830",
            "overlay_template_x": 5,
            "overlay_template_y": 5,
            "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1711939252580-7e40bd1a-e480-42ed-8585-3f9ffccf6bdb-5822.png",
            "modify_origin_img_size": "3830x2145",
            "overlay_origin_x": 5,
            "overlay_origin_y": 849,
        },
        "example-2-color-only": {
            "color_code": "#c9aafb",
            "canvas_size": "3840x3840",
            "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png",
            "modify_origin_img_size": "3060x3824",
            "overlay_origin_x": 388,
            "overlay_origin_y": 8,
        },
        "example-3-template-and-color": {
            "color_code": "#aafbe3",
            "canvas_size": "3840x3840",
            "template_url": "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png",
            "modify_template_size": "3828x3828",
            "overlay_template_x": 2049,
            "overlay_template_y": -6,
            "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png",
            "modify_origin_img_size": "3062x3828",
            "overlay_origin_x": -72,
            "overlay_origin_y": -84,
        },
        "example-4-neither": {
            "canvas_size": "3840x3840",
            "origin_img": "https://drz0f01yeq1cx.cloudfront.net/1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png",
            "modify_origin_img_size": "3060x3824",
            "overlay_origin_x": 388,
            "overlay_origin_y": 8,
        },
    }
    cdn = "https://drz0f01yeq1cx.cloudfront.net/"
    source_map = {
        "https://d3c24lvfmudc1v.cloudfront.net/public/background_change/ROne.png": "images/template.jpg",
        cdn + "1711939252580-7e40bd1a-e480-42ed-8585-3f9ffccf6bdb-5822.png": "images/foreground.png",
        cdn + "1712132369637-69a946c0-b2a7-4fe6-92c8-2729b36cc13e-0183.png": "images/foreground.png",
    }
    (ROOT / "source-map.json").write_text(json.dumps(source_map, indent=2) + "\n")
    for name, body in bodies.items():
        (REQUESTS / f"{name}.json").write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
