"""removeBg: our stage against rembg.remove() on a 3062x3828 foreground (the
size of the docs' example 3), both in this process, alternating, after a
warm-up; medians of --repeat runs, for each model rembg also has (u2netp,
u2net); MODNet (no rembg peer) is timed alone. Also checks that the masks
agree, so neither side is timed doing less work; then each model's quality
against every reference image that exists (rembg's published masks), and
the peak RSS of one `compositor render` with each model.

    .venv/bin/python benchmarks/bench_removebg.py [--repeat 5] [--json FILE] [--picture docs/removebg-models.png]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_render import run_process  # noqa: E402  (GNU time: a child of this large process inherits its peak)
from common_results import machine  # noqa: E402

PEERS = REPO.parent / "shared" / "peer-fixtures" / "rembg"
SIZE = (3062, 3828)
MODELS = ("u2netp", "u2net", "modnet")
RATIO_GOAL = 0.6  # our time / rembg.remove()'s, for each model rembg also has
# rembg's published outputs: the README's three examples (u2net) and anime-girl-1 with u2net, u2netp and BiRefNet.
REFERENCES = {
    "anime-girl-1": {"u2net": "anime-girl-1.u2net.png", "u2netp": "anime-girl-1.u2netp.png",
                     "birefnet-general": "anime-girl-1.birefnet-general.png"},
    "animal-2": {"u2net": "animal-2.out.png"},
    "car-1": {"u2net": "car-1.out.png"},
    "girl-1": {"u2net": "girl-1.out.png"},
}  # fmt: skip


def alpha_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGBA").getchannel("A")).astype(int)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a >= 128) & (b >= 128)).sum() / max(((a >= 128) | (b >= 128)).sum(), 1))


def timed(fn: Any, repeat: int) -> tuple[float, Any]:
    runs, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs), result


def speed(repeat: int) -> dict[str, Any]:
    from rembg import new_session, remove

    from compositor.removebg import RemovalOptions, get_remover
    from compositor.timings import StageTimings

    image = Image.open(PEERS / "anime-girl-1.jpg").convert("RGB").resize(SIZE, Image.Resampling.LANCZOS)
    results: dict[str, Any] = {}
    for model in MODELS:
        ours = get_remover(RemovalOptions(model=model, device="cpu"))
        splits: list[dict[str, float]] = []

        def run_ours(ours: Any = ours, splits: list[dict[str, float]] = splits) -> Image.Image:
            timings = StageTimings()
            cut = ours.remove(image, timings)
            splits.append(timings.seconds)
            return cut

        entry: dict[str, Any] = {}
        if model == "modnet":
            run_ours()
            entry["ours_s"], _ = timed(run_ours, repeat)
        else:
            theirs = new_session(model, providers=["CPUExecutionProvider"])
            run_ours(), remove(image, session=theirs)  # warm-up: sessions, caches, page faults
            ours_runs, rembg_runs = [], []
            for _ in range(repeat):  # alternating, so both see the same machine
                seconds, ours_cut = timed(run_ours, 1)
                ours_runs.append(seconds)
                seconds, rembg_cut = timed(lambda theirs=theirs: remove(image, session=theirs), 1)
                rembg_runs.append(seconds)
            entry |= {"ours_s": statistics.median(ours_runs), "rembg_s": statistics.median(rembg_runs)}
            entry["ratio"] = entry["ours_s"] / entry["rembg_s"]
            a, b = alpha_of(ours_cut), alpha_of(rembg_cut)
            entry |= {"iou_vs_rembg": iou(a, b), "mad_vs_rembg": float(np.abs(a - b).mean())}
        entry["split_s"] = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
        results[model] = entry
    return results


def quality() -> dict[str, Any]:
    from compositor.removebg import RemovalOptions, get_remover

    table: dict[str, Any] = {}
    for model in MODELS:
        remover = get_remover(RemovalOptions(model=model, device="cpu"))
        for photo, references in REFERENCES.items():
            if not (PEERS / f"{photo}.jpg").exists():
                continue
            mask = np.asarray(remover.predict(Image.open(PEERS / f"{photo}.jpg"))).astype(int)
            for reference, name in references.items():
                expected = alpha_of(Image.open(PEERS / name))
                table[f"{model} {photo} vs rembg {reference}"] = {
                    "iou": iou(mask, expected),
                    "mad": float(np.abs(mask - expected).mean()),
                }
    return table


def peak_rss_mb(model: str) -> float:
    """`compositor render` of a 3062x3828 removeBg body in a fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "photo.jpg"
        Image.open(PEERS / "anime-girl-1.jpg").convert("RGB").resize(SIZE, Image.Resampling.LANCZOS).save(photo)
        body = {"canvas_size": "3840x3840", "color_code": "#aafbe3", "origin_img": str(photo),
                "modify_origin_img_size": f"{SIZE[0]}x{SIZE[1]}", "overlay_origin_x": -72, "overlay_origin_y": -84,
                "removeBg": True}  # fmt: skip
        (Path(folder) / "body.json").write_text(json.dumps(body))
        argv = [str(Path(sys.executable).parent / "compositor"), "render", str(Path(folder) / "body.json")]
        return run_process([*argv, "-o", str(Path(folder) / "out.png"), "--model", model]) / 1024


def picture(path: Path) -> None:
    """The four peer photographs' masks, one row per model (and rembg's published u2net masks)."""
    from compositor.removebg import RemovalOptions, get_remover

    photos = [p for p in REFERENCES if (PEERS / f"{p}.jpg").exists()]
    cell = 220
    rows = [("photo", None), ("rembg u2net (published)", None), *[(m, m) for m in MODELS]]
    sheet = Image.new("RGB", (cell * len(photos) + 170, cell * len(rows)), "white")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(sheet)
    for r, (label, model) in enumerate(rows):
        draw.text((6, r * cell + cell // 2), label, fill="black")
        for c, photo in enumerate(photos):
            source = Image.open(PEERS / f"{photo}.jpg").convert("RGB")
            if r == 0:
                tile = source
            elif model is None:
                tile = Image.open(PEERS / REFERENCES[photo]["u2net"]).convert("RGBA").getchannel("A")
            else:
                tile = get_remover(RemovalOptions(model=model, device="cpu")).predict(source)
            tile = tile.convert("RGB")
            tile.thumbnail((cell - 8, cell - 8))
            sheet.paste(tile, (170 + c * cell + 4, r * cell + 4))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--picture", type=Path, help="draw the masks side by side here")
    args = parser.parse_args()

    import compositor  # noqa: F401  (sets ORT_DISABLE_TELEMETRY before rembg loads onnxruntime)
    from compositor.weights import default_home, verified_path

    for model in MODELS:
        verified_path(model)
    os.environ.setdefault("REMBG_HOME", str(default_home()))  # rembg finds the same verified weights

    results: dict[str, Any] = {"size": SIZE, "cores": os.cpu_count(), "machine": machine(), "ratio_goal": RATIO_GOAL}
    results |= {"speed": speed(args.repeat), "quality": quality()}
    results["peak_rss_mb"] = {model: peak_rss_mb(model) for model in MODELS}
    print(f"removeBg on {SIZE[0]}x{SIZE[1]}, medians of {args.repeat} (CPU, {os.cpu_count()} cores)")
    for model, entry in results["speed"].items():
        split = "  ".join(f"{k} {v:.3f}" for k, v in entry["split_s"].items())
        line = f"  {model:7} ours {entry['ours_s']:6.3f} s ({split})"
        if "rembg_s" in entry:
            line += (
                f"; rembg.remove {entry['rembg_s']:6.3f} s; ratio {entry['ratio']:.3f} (goal <= {RATIO_GOAL});"
                f" IoU vs rembg {entry['iou_vs_rembg']:.4f}"
            )
        print(line + f"; peak RSS of a render {results['peak_rss_mb'][model]:.0f} MB")
    print("\nquality against rembg's published masks (IoU at alpha 128, mean abs alpha difference)")
    for name, entry in results["quality"].items():
        print(f"  {name:46} IoU {entry['iou']:.4f}  MAD {entry['mad']:6.2f}")
    if args.picture:
        picture(args.picture)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
