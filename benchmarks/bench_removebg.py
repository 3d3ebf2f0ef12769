"""removeBg: our stage against rembg.remove() on a 3062x3828 foreground (the
size of the docs' example 3), both in this process, alternating, after a
warm-up; medians of --repeat runs. Also checks that the masks agree, so
neither side is timed doing less work.

    .venv/bin/python benchmarks/bench_removebg.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PEER = REPO.parent / "shared" / "peer-fixtures" / "rembg" / "anime-girl-1.jpg"
SIZE = (3062, 3828)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import compositor  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before rembg loads onnxruntime)
    from compositor.models import default_home, verified_path
    from compositor.removebg import RemovalOptions, get_remover
    from compositor.timings import StageTimings

    verified_path("u2netp")
    os.environ.setdefault("REMBG_HOME", str(default_home()))  # rembg finds the same verified weights
    from rembg import new_session, remove

    image = Image.open(PEER).convert("RGB").resize(SIZE, Image.Resampling.LANCZOS)
    ours = get_remover(RemovalOptions(device="cpu"))
    theirs = new_session("u2netp", providers=["CPUExecutionProvider"])

    def run_ours() -> tuple[Image.Image, dict[str, float]]:
        timings = StageTimings()
        return ours.remove(image, timings), timings.seconds

    def run_rembg() -> Image.Image:
        return remove(image, session=theirs)

    run_ours(), run_rembg()  # warm-up: sessions, caches, page faults
    ours_times, rembg_times, splits = [], [], []
    for _ in range(args.repeat):
        start = time.perf_counter()
        ours_result, stages = run_ours()
        ours_times.append(time.perf_counter() - start)
        splits.append(stages)
        start = time.perf_counter()
        rembg_result = run_rembg()
        rembg_times.append(time.perf_counter() - start)

    a = np.asarray(ours_result.getchannel("A")).astype(int)
    b = np.asarray(rembg_result.getchannel("A")).astype(int)
    iou = float(((a >= 128) & (b >= 128)).sum() / max(((a >= 128) | (b >= 128)).sum(), 1))
    mad = float(np.abs(a - b).mean())

    ours_median, rembg_median = statistics.median(ours_times), statistics.median(rembg_times)
    split = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    print(f"removeBg on {SIZE[0]}x{SIZE[1]}, median of {args.repeat} (CPU, {os.cpu_count()} cores)")
    print(f"  rembg.remove(u2netp)      {rembg_median:7.3f} s")
    print(f"  compositor remove stage   {ours_median:7.3f} s")
    print("    " + "  ".join(f"{k} {v:.3f} s" for k, v in split.items()))
    print(f"  ratio ours/rembg          {ours_median / rembg_median:7.3f}   (goal <= 0.6)")
    print(f"  alpha agreement: IoU@128 {iou:.4f}, mean abs diff {mad:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "size": SIZE,
                    "rembg_s": rembg_median,
                    "ours_s": ours_median,
                    "ratio": ours_median / rembg_median,
                    "split_s": split,
                    "iou": iou,
                    "mad": mad,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
