"""Draw docs/preflight.png: a body that pre-flight warns about, rendered, and
the same body after following its warnings, rendered, with the warnings that
`compositor validate --sources` gave each (none for the second). Both bodies
are fixtures (`fixtures/requests/preflight-before.json` and
`preflight-after.json`); the engine renders them and pre-flight judges them
here, so the picture cannot show what the code does not say.

    python scripts/make_preflight_picture.py
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from compositor import RenderOptions, SourcePolicy, render
from compositor.preflight import preflight
from compositor.request import validate
from compositor.sourcemap import load_source_map

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "fixtures" / "requests"
PANEL_WIDTH = 560


def _checkerboard(size: tuple[int, int], cell: int = 16) -> Image.Image:
    """Grey squares where the canvas is transparent, as image editors show it."""
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], cell):
        for x in range((y // cell) % 2 * cell, size[0], 2 * cell):
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(205, 205, 205))
    return board


def _judged(name: str, policy: SourcePolicy) -> tuple[Image.Image, list[str]]:
    body = json.loads((REQUESTS / name).read_text())
    report = validate(body)
    assert report.request is not None, f"{name} is not a valid body"
    _, warnings = preflight(report.request, policy)
    picture = render(body, options=RenderOptions(sources=policy))
    height = round(picture.height * PANEL_WIDTH / picture.width)
    picture = picture.resize((PANEL_WIDTH, height), Image.Resampling.LANCZOS)
    shown = _checkerboard(picture.size)
    shown.paste(picture, mask=picture.getchannel("A"))
    return shown, [f"{problem.field}: {problem.message}" for problem in warnings]


def main() -> None:
    policy = SourcePolicy(base_dir=REQUESTS, source_map=load_source_map(ROOT / "fixtures" / "source-map.json"))
    panels = [("preflight-before.json", "before"), ("preflight-after.json", "after following the warnings")]
    judged = [(*_judged(name, policy), title) for name, title in panels]
    height = max(picture.height for picture, _, _ in judged)
    wrapped = [
        [text for w in warnings for text in textwrap.wrap(w, 92, subsequent_indent="  ")] for _, warnings, _ in judged
    ]
    line = 14
    lines = max(len(texts) for texts in wrapped)
    sheet = Image.new("RGB", (len(judged) * (PANEL_WIDTH + 20) + 10, height + 44 + lines * line), "white")
    draw = ImageDraw.Draw(sheet)
    x = 10
    for (picture, warnings, title), texts in zip(judged, wrapped, strict=True):
        said = f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else "no warning"
        draw.text((x, 8), f"{title}: valid (1000), {said}", fill="black")
        sheet.paste(picture, (x, 28))
        for row, text in enumerate(texts):
            draw.text((x, 36 + height + row * line), text, fill=(150, 80, 0))
        x += PANEL_WIDTH + 20
    sheet.save(ROOT / "docs" / "preflight.png", optimize=True)


if __name__ == "__main__":
    main()
