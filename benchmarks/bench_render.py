"""Render speed against the peers, measured in one run on this machine.

Contenders: compositor in-process and as a CLI process; a straightforward
Pillow composite with defaults; ImageMagick's CLI at its default PNG quality
and at -quality 15; libvips through pyvips with its default PNG settings.
Cases: the four documented examples at full size with photo-like inputs, a
1024x1024 case, and a sweep of example 3's geometry from 512^2 to 8192^2.

Every contender's output is first checked against ours (so nobody is timed
doing less work), then each case is run warm-up + --repeat times, contenders
alternating, and the medians compared. Peak RSS is read per process (wait4).

    make bench-render          # sets up the peers, then runs this
    .venv/bin/python benchmarks/bench_render.py [--repeat 5] [--quick] [--json FILE]

Prints a table, writes benchmarks/results/render.json (or --json FILE) and two
plots under docs/ (bench-cases.png, bench-sweep.png).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results"
DOCS = REPO / "docs"
IMAGEMAGICK = shutil.which("convert-im6.q16") or "/usr/bin/convert"
GNU_TIME = "/usr/bin/time"

sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
from common_results import machine  # noqa: E402
from make_fixtures import photo_like, soft_foreground  # noqa: E402


@dataclass
class Contender:
    name: str
    run: Callable[[Path, Path], int]  # (body file, output) -> peak RSS in KiB (0: not measured)
    slow: bool = False  # run only where the goal needs it: it takes seconds a render


@dataclass
class Measurement:
    seconds: list[float] = field(default_factory=list)
    peak_kib: int = 0
    size_bytes: int = 0
    check: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_process(argv: list[str]) -> int:
    """Run a command; its own peak RSS in KiB. Measured by GNU time, a small
    process in between: a child of this (large) harness would inherit the
    harness's high-water mark in its own ru_maxrss."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        done = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", report.name, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.decode()[-500:]}")
        return int(report.read().split()[-1])


def compositor_in_process(body_file: Path, out: Path) -> int:
    from compositor import RenderOptions, SourcePolicy
    from compositor.encode import encode
    from compositor.engine import render_array

    body = json.loads(body_file.read_text())
    out.write_bytes(encode(render_array(body, options=RenderOptions(sources=SourcePolicy(base_dir=body_file.parent)))))
    return 0


def imagemagick_argv(body: dict[str, Any], out: Path, quality: int | None) -> list[str]:
    width, height = body["canvas_size"].split("x")
    argv = [IMAGEMAGICK, "-size", f"{width}x{height}", f"xc:{body.get('color_code') or 'none'}"]
    layers = []
    if body.get("template_url"):
        layers.append((body["template_url"], body.get("modify_template_size"),
                       body.get("overlay_template_x", 0), body.get("overlay_template_y", 0)))  # fmt: skip
    layers.append(
        (body["origin_img"], body["modify_origin_img_size"], body["overlay_origin_x"], body["overlay_origin_y"])
    )
    for path, size, x, y in layers:
        resize = ["-filter", "Lanczos", "-resize", f"{size}!"] if size else []
        argv += ["(", path, "-auto-orient", *resize, ")", "-geometry", f"{x:+d}{y:+d}", "-composite"]
    if quality is not None:
        argv += ["-quality", str(quality)]
    return [*argv, f"PNG32:{out}"]


def contenders() -> list[Contender]:
    python = str(BIN / "python")
    peers = REPO / "benchmarks" / "peers"
    return [
        Contender("compositor (in-process)", compositor_in_process),
        Contender(
            "compositor CLI", lambda b, o: run_process([str(BIN / "compositor"), "render", str(b), "-o", str(o)])
        ),
        Contender(
            "compositor --low-memory",
            lambda b, o: run_process([str(BIN / "compositor"), "render", str(b), "-o", str(o), "--low-memory"]),
        ),
        Contender(
            "pyvips defaults", lambda b, o: run_process([python, str(peers / "vips_composite.py"), str(b), str(o)])
        ),
        Contender(
            "ImageMagick -quality 15",
            lambda b, o: run_process(imagemagick_argv(json.loads(b.read_text()), o, 15)),
        ),
        Contender(
            "ImageMagick default",
            lambda b, o: run_process(imagemagick_argv(json.loads(b.read_text()), o, None)),
            slow=True,
        ),
        Contender(
            "Pillow defaults",
            lambda b, o: run_process([python, str(peers / "pillow_defaults.py"), str(b), str(o)]),
            slow=True,
        ),
    ]


def make_inputs(folder: Path) -> dict[str, Path]:
    """Photo-like sources at sizes the documented bodies scale from."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"template": folder / "template.jpg", "foreground": folder / "foreground.png"}
    if not paths["template"].exists():
        photo_like(2400, 2672, seed=11).save(paths["template"], quality=92)
    if not paths["foreground"].exists():
        soft_foreground(2048, 2560, seed=12).save(paths["foreground"], compress_level=1)
    return paths


def documented_cases(inputs: dict[str, Path]) -> dict[str, dict[str, Any]]:
    cases = {}
    for request in sorted((REPO / "fixtures" / "requests").glob("example-*.json")):
        body = json.loads(request.read_text())
        if "template_url" in body:
            body["template_url"] = str(inputs["template"])
        body["origin_img"] = str(inputs["foreground"])
        cases[request.stem.replace("example-", "doc ")] = body
    return cases


def scaled_example_3(inputs: dict[str, Path], side: int) -> dict[str, Any]:
    k = side / 3840
    return {
        "canvas_size": f"{side}x{side}",
        "color_code": "#aafbe3",
        "template_url": str(inputs["template"]),
        "modify_template_size": f"{round(3828 * k)}x{round(3828 * k)}",
        "overlay_template_x": round(2049 * k),
        "overlay_template_y": 0,
        "origin_img": str(inputs["foreground"]),
        "modify_origin_img_size": f"{round(3062 * k)}x{round(3828 * k)}",
        "overlay_origin_x": round(-72 * k),
        "overlay_origin_y": round(-84 * k),
    }


def premultiplied(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA").convert("RGBa"))


def check_against(reference: Path, candidate: Path) -> tuple[bool, str]:
    """Same picture: same size, mean premultiplied difference within 1.5 levels
    and 99.9% of samples within 12 (other Lanczos implementations differ at
    edges, but a missing layer, a shift or a wrong scale is far beyond that)."""
    a, b = premultiplied(reference), premultiplied(candidate)
    if a.shape != b.shape:
        return False, f"size {b.shape[1]}x{b.shape[0]}"
    # In uint8 with OpenCV: the float version spent 4.9 s per 3840x3840 check,
    # a quarter of the harness's run time.
    diff = cv2.absdiff(a, b).reshape(-1, 1)
    counts = np.cumsum(cv2.calcHist([diff], [0], None, [256], [0, 256]).ravel())
    mean = float(np.dot(np.diff(counts, prepend=0), np.arange(256)) / counts[-1])
    p999 = float(np.searchsorted(counts, 0.999 * counts[-1]))
    return mean <= 1.5 and p999 <= 12, f"mean {mean:.2f}, p99.9 {p999:.0f}"


def measure_case(
    name: str, body: dict[str, Any], chosen: list[Contender], repeat: int, work: Path
) -> dict[str, Measurement]:
    body_file = work / f"{name.replace(' ', '-')}.json"
    body_file.write_text(json.dumps(body))
    outputs = {c.name: work / f"{name.replace(' ', '-')}--{i}.png" for i, c in enumerate(chosen)}
    results = {c.name: Measurement() for c in chosen}
    for contender in chosen:  # correctness first, and the warm-up
        contender.run(body_file, outputs[contender.name])
    reference = outputs[chosen[0].name]
    for contender in chosen:
        ok, detail = check_against(reference, outputs[contender.name])
        if not ok:
            raise SystemExit(f"{name}: {contender.name} does not render the same picture ({detail})")
        results[contender.name].check = detail
        results[contender.name].size_bytes = outputs[contender.name].stat().st_size
    for round_index in range(repeat):
        order = chosen[round_index % len(chosen) :] + chosen[: round_index % len(chosen)]
        for contender in order:
            start = time.perf_counter()
            peak = contender.run(body_file, outputs[contender.name])
            results[contender.name].seconds.append(time.perf_counter() - start)
            results[contender.name].peak_kib = max(results[contender.name].peak_kib, peak)
    return results


def our_stages(body: dict[str, Any], repeat: int) -> dict[str, float]:
    from compositor import RenderOptions, StageTimings
    from compositor.encode import encode
    from compositor.engine import render_array

    samples = []
    for _ in range(repeat + 1):
        timings = StageTimings()
        canvas = render_array(body, options=RenderOptions(), timings=timings)
        with timings.stage("encode"):
            encode(canvas)
        samples.append(timings.seconds)
    return {k: statistics.median(s[k] for s in samples[1:]) for k in samples[0]}


def blend_apart(body: dict[str, Any], repeat: int) -> dict[str, float]:
    """The blend stage taken apart, with nothing else running: every strip is
    resized first, then placed as the engine places it. `extract` is the copy
    of the strips out of Pillow (np.asarray; Pillow offers its pixels only as
    a copy), `composite` the rest: the template's RGB to RGBA copy and the
    foreground's premultiplied over."""
    from compositor.engine import STRIP_ROWS
    from compositor.geometry import Size, clip_to_canvas, split_rows
    from compositor.raster import new_canvas, place, resize_visible
    from compositor.request import parse_request
    from compositor.sources import SourcePolicy, load_image

    request = parse_request(body)
    strips = []
    for layer, field_name in ((request.template, "template_url"), (request.foreground, "origin_img")):
        if layer is None:
            continue
        image = load_image(layer.source, field_name, SourcePolicy())
        placement = clip_to_canvas(request.canvas, layer.size or Size(*image.size), layer.x, layer.y)
        if placement is not None:
            strips += [(resize_visible(image, strip), strip) for strip in split_rows(placement, STRIP_ROWS)]
    canvas = new_canvas(request.canvas, request.color)
    extract, whole = [], []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        for region, _strip in strips:
            np.asarray(region)
        extract.append(time.perf_counter() - start)
        start = time.perf_counter()
        for region, strip in strips:
            place(canvas, region, strip)
        whole.append(time.perf_counter() - start)
    return {
        "extract": statistics.median(extract[1:]),
        "composite": statistics.median(whole[1:]) - statistics.median(extract[1:]),
    }


def memcopy_seconds(side: int, repeat: int) -> float:
    source = np.full((side, side, 4), 7, np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in: the floor is a warm copy
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(exist_ok=True)
    cases = results["cases"]
    names = list(cases)
    contender_names = [c.name for c in contenders()]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(contender_names)
    for index, contender in enumerate(contender_names):
        values = [cases[case].get(contender, {}).get("median_s", np.nan) for case in names]
        ax.bar(np.arange(len(names)) + index * width, values, width, label=contender)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, log scale)")
    ax.set_title(f"Render time by contender ({os.cpu_count()} cores, lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "bench-cases.png", dpi=90)

    sweep = results["sweep"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pixels = [entry["pixels"] for entry in sweep]
    for contender in sweep[0]["contenders"]:
        ax.plot(pixels, [entry["contenders"][contender]["median_s"] for entry in sweep], "o-", label=contender)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("canvas pixels")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Example 3's geometry, 512^2 to 8192^2")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(DOCS / "bench-sweep.png", dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender and case (after a warm-up)")
    parser.add_argument("--quick", action="store_true", help="doc example 3 and the small case only")
    parser.add_argument("--json", type=Path, default=RESULTS / "render.json", help="write the results here")
    args = parser.parse_args()

    all_contenders = contenders()
    fast = [c for c in all_contenders if not c.slow]
    work = Path(tempfile.mkdtemp(prefix="compositor-bench-"))
    inputs = make_inputs(REPO / "benchmarks" / "inputs")
    cases = documented_cases(inputs)
    cases["small 1024"] = scaled_example_3(inputs, 1024)
    if args.quick:
        cases = {k: v for k, v in cases.items() if k in ("doc 3-template-and-color", "small 1024")}

    results: dict[str, Any] = {"machine": machine(), "repeat": args.repeat, "cases": {}, "sweep": []}
    print(f"{os.cpu_count()} cores; medians of {args.repeat} after a warm-up; outputs checked against ours first\n")
    header = f"{'case':26} {'contender':26} {'median s':>9} {'ratio':>7} {'peak MB':>8} {'PNG MB':>7}  check"
    print(header)
    print("-" * len(header))
    for name, body in cases.items():
        full = name in ("doc 3-template-and-color", "small 1024")
        measured = measure_case(name, body, all_contenders if full else fast, args.repeat, work)
        ours = measured["compositor CLI"].median
        results["cases"][name] = {}
        for contender, m in measured.items():
            results["cases"][name][contender] = {
                "median_s": m.median,
                "runs_s": m.seconds,
                "peak_mb": m.peak_kib / 1024,
                "png_bytes": m.size_bytes,
                "check": m.check,
            }
            print(
                f"{name:26} {contender:26} {m.median:9.3f} {m.median / ours:7.2f} "
                f"{m.peak_kib / 1024 if m.peak_kib else float('nan'):8.0f} {m.size_bytes / 1e6:7.1f}  {m.check}"
            )
        print()

    example_3 = cases["doc 3-template-and-color"]
    stages = our_stages(example_3, args.repeat)
    copy = memcopy_seconds(3840, args.repeat)
    results["stages_example_3_s"] = stages
    results["memcopy_3840_s"] = copy
    apart = blend_apart(example_3, args.repeat)
    results["blend_apart_example_3_s"] = apart
    print(
        "our stages, doc example 3 (in-process medians, seconds summed over threads; they overlap): "
        + "  ".join(f"{k} {v:.3f}" for k, v in stages.items())
    )
    print(f"warm copy of a 3840x3840 RGBA canvas: {copy * 1000:.1f} ms; blend / copy = {stages['blend'] / copy:.1f}")
    print(
        f"the blend alone, nothing else running: {(apart['extract'] + apart['composite']) * 1000:.1f} ms "
        f"({(apart['extract'] + apart['composite']) / copy:.1f}x the copy) = copying strips out of Pillow "
        f"{apart['extract'] * 1000:.1f} ms + compositing {apart['composite'] * 1000:.1f} ms "
        f"({apart['composite'] / copy:.1f}x the copy)\n"
    )

    sides = [512, 1024, 2048, 4096] if args.quick else [512, 1024, 2048, 4096, 8192]
    swept = ("compositor (in-process)", "compositor CLI", "compositor --low-memory", "pyvips defaults")
    sweepers = [c for c in fast if c.name in swept]
    print(
        f"{'sweep':10} "
        + " ".join(f"{c.name:>24}" for c in sweepers)
        + f" {'CLI peak MB':>12} {'--low-memory':>12} {'pyvips':>7}"
    )
    for side in sides:
        measured = measure_case(f"sweep {side}", scaled_example_3(inputs, side), sweepers, args.repeat, work)
        results["sweep"].append(
            {
                "side": side,
                "pixels": side * side,
                "contenders": {k: {"median_s": v.median, "peak_mb": v.peak_kib / 1024} for k, v in measured.items()},
            }
        )
        print(
            f"{side:>4}x{side:<5} "
            + " ".join(f"{measured[c.name].median:24.3f}" for c in sweepers)
            + " ".join(
                f" {measured[name].peak_kib / 1024:{width}.0f}"
                for name, width in (("compositor CLI", 12), ("compositor --low-memory", 11), ("pyvips defaults", 6))
            )
        )

    doc3 = results["cases"]["doc 3-template-and-color"]
    cli = doc3["compositor CLI"]
    goals = [
        ("CLI vs Pillow defaults, doc 3", cli["median_s"] / doc3["Pillow defaults"]["median_s"], 0.07),
        ("CLI vs ImageMagick -quality 15", cli["median_s"] / doc3["ImageMagick -quality 15"]["median_s"], 0.3),
        ("CLI vs pyvips defaults", cli["median_s"] / doc3["pyvips defaults"]["median_s"], 0.7),
        # 0.7x pyvips' PNG size was dropped: on doc 3 it means Pillow's own size (bench_png.py: the writer's goals).
        ("PNG size vs Pillow default level", cli["png_bytes"] / doc3["Pillow defaults"]["png_bytes"], 1.20),
        ("blend stage vs warm canvas copy", stages["blend"] / copy, 3.0),
        ("peak RSS of the CLI, doc 3 (MB)", cli["peak_mb"], 300),
    ]
    first, last = results["sweep"][0], results["sweep"][-1]
    per_pixel = [e["contenders"]["compositor (in-process)"]["median_s"] / e["pixels"] for e in results["sweep"]]
    goals.append(("sweep: cost per pixel, largest / 1024^2", per_pixel[-1] / per_pixel[1], 1.5))
    results["goals"] = [{"measure": m, "value": v, "goal": g, "met": v <= g} for m, v, g in goals]
    print("\ngoals (ratios from this run)")
    for measure, value, goal in goals:
        print(f"  {measure:42} {value:8.3f}   goal <= {goal:<6} {'met' if value <= goal else 'MISSED'}")
    print(f"  (sweep: {first['side']}^2 .. {last['side']}^2, no step ran out of memory)")
    banded, largest = doc3["compositor --low-memory"], last["contenders"]
    print(
        f"  stretch, band by band (--low-memory): doc 3 peak {banded['peak_mb']:.0f} MB in {banded['median_s']:.2f} s "
        f"(pyvips {doc3['pyvips defaults']['peak_mb']:.0f} MB); {last['side']}^2 peak "
        f"{largest['compositor --low-memory']['peak_mb']:.0f} MB (whole canvas: "
        f"{largest['compositor CLI']['peak_mb']:.0f} MB, pyvips {largest['pyvips defaults']['peak_mb']:.0f} MB)"
    )

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    plot(results)
    print(f"\nwrote {args.json}, {DOCS / 'bench-cases.png'}, {DOCS / 'bench-sweep.png'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
