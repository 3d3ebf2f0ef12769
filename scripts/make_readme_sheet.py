"""Draw docs/examples.png: the four documented examples as rendered by
`make examples` (transparent areas on a checkerboard), for the README.

    python scripts/make_readme_sheet.py [out/examples]
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
TILE = 300
LABELS = ["1: template only", "2: colour only", "3: template and colour", "4: neither"]


def checkerboard(size: int, cell: int = 15) -> Image.Image:
    board = Image.new("RGBA", (size, size), (205, 205, 205, 255))
    draw = ImageDraw.Draw(board)
    for y in range(0, size, cell):
        for x in range(0, size, cell):
            if (x // cell + y // cell) % 2:
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=(150, 150, 150, 255))
    return board


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "out" / "examples"
    renders = sorted(source.glob("example-*.png"))
    if len(renders) != 4:
        sys.exit(f"expected four example renders in {source}; run `make examples` first")
    sheet = Image.new("RGB", (4 * TILE + 50, TILE + 30), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, (path, label) in enumerate(zip(renders, LABELS, strict=True)):
        tile = checkerboard(TILE)
        tile.alpha_composite(Image.open(path).convert("RGBA").resize((TILE, TILE), Image.Resampling.LANCZOS))
        x = 10 + index * (TILE + 10)
        sheet.paste(tile.convert("RGB"), (x, 25))
        draw.text((x, 6), label, fill=(0, 0, 0))
    sheet.save(ROOT / "docs" / "examples.png", optimize=True)


if __name__ == "__main__":
    main()
