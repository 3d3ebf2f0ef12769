"""Regenerate the golden images in fixtures/golden/ from the cases beside them.

Goldens change only on purpose: without --write this reports, per case, how
far the current engine is from the stored golden and exits 1 if any differs.
Look at every image you rewrite before committing it.

    python scripts/update_goldens.py            # compare
    python scripts/update_goldens.py --write    # rewrite (then look at them)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from compositor import RenderOptions, SourcePolicy, render

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "golden"


def render_case(case: Path) -> Image.Image:
    options = RenderOptions(sources=SourcePolicy(base_dir=case.parent))
    return render(json.loads(case.read_text()), options=options)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="overwrite the stored goldens")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    changed = 0
    for case in sorted((GOLDEN / "cases").glob("*.json")):
        if args.cases and case.stem not in args.cases:
            continue
        image = render_case(case)
        target = GOLDEN / f"{case.stem}.png"
        if target.exists():
            stored = np.asarray(Image.open(target).convert("RGBA")).astype(int)
            diff = np.abs(stored - np.asarray(image).astype(int)) if stored.shape[:2] == image.size[::-1] else None
            state = "size differs" if diff is None else f"max diff {diff.max()}, mean {diff.mean():.4f}"
        else:
            state = "new"
        different = state != "max diff 0, mean 0.0000"
        changed += different
        if args.write and different:
            image.save(target, optimize=True)
            state += " -> written"
        print(f"{case.stem:32} {state}")
    return 1 if changed and not args.write else 0


if __name__ == "__main__":
    sys.exit(main())
