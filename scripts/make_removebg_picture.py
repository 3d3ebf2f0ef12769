"""Draw docs/removebg.png: a real photograph (rembg's animal-2 example, MIT)
before and after `removeBg`, composited over the docs' template URL (mapped
to the stand-in image) by the engine itself.

    python scripts/make_removebg_picture.py
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from compositor import RenderOptions, SourcePolicy, render
from compositor.sourcemap import load_source_map

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


def main() -> None:
    request = FIXTURES / "requests" / "removebg-photo.json"
    policy = SourcePolicy(base_dir=request.parent, source_map=load_source_map(FIXTURES / "source-map.json"))
    composite = render(json.loads(request.read_text()), options=RenderOptions(sources=policy))
    photo = Image.open(FIXTURES / "images" / "animal-2.jpg").convert("RGB")
    height = 420
    panels = [photo.resize((round(photo.width * height / photo.height), height)), composite.convert("RGB")]
    panels[1] = panels[1].resize((round(panels[1].width * height / panels[1].height), height))
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 30, height + 28), "white")
    draw = ImageDraw.Draw(sheet)
    x = 10
    for panel, title in zip(panels, ("the photograph (origin_img)", "removeBg: true, over the template"), strict=True):
        draw.text((x, 6), title, fill="black")
        sheet.paste(panel, (x, 24))
        x += panel.width + 10
    sheet.save(ROOT / "docs" / "removebg.png", optimize=True)


if __name__ == "__main__":
    main()
