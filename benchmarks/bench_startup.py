"""Fixed costs, measured as whole processes: what a keystroke's pre-flight and
a small render cost from a cold interpreter (issue 21).

Contenders alternate, each a fresh process, a warm-up then the median of
--repeat runs:
- a bare `python -c pass` of the same interpreter (the yardstick);
- `compositor validate` of the docs' example 3;
- a 512x512 render of example 3's geometry (colour + template + foreground,
  from the photo-like inputs of bench_render.py) through the CLI, through the
  straightforward Pillow pipeline (benchmarks/peers/pillow_defaults.py) and
  through pyvips (benchmarks/peers/vips_composite.py), started the same way.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 15] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_render import make_inputs, scaled_example_3  # noqa: E402
from common_results import machine  # noqa: E402

GOALS = {  # contender over yardstick: at most
    "validate / python -c pass": 2.5,
    "CLI 512 / Pillow 512": 1.0,
    "CLI 512 / pyvips 512": 1.0,
}


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    args = parser.parse_args()
    python = sys.executable
    compositor = str(Path(python).parent / "compositor")
    inputs = make_inputs(REPO / "benchmarks" / "inputs")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        body = work / "small-512.json"
        body.write_text(json.dumps(scaled_example_3(inputs, 512)))
        example_3 = str(REPO / "fixtures" / "requests" / "example-3-template-and-color.json")
        contenders = {
            "python -c pass": [python, "-c", "pass"],
            "validate": [compositor, "validate", example_3],
            "CLI 512": [compositor, "render", str(body), "-o", str(work / "cli.png")],
            "Pillow 512": [python, str(REPO / "benchmarks" / "peers" / "pillow_defaults.py"), str(body), "p.png"],
            "pyvips 512": [python, str(REPO / "benchmarks" / "peers" / "vips_composite.py"), str(body), "v.png"],
        }
        for argv in contenders.values():
            if argv[-1].endswith(".png") and not argv[-1].startswith("/"):
                argv[-1] = str(work / argv[-1])
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for round_ in range(args.repeat + 1):
            for name, argv in contenders.items():
                seconds = _time(argv)
                if round_:  # the first round warms the page cache
                    samples[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {
        "validate / python -c pass": medians["validate"] / medians["python -c pass"],
        "CLI 512 / Pillow 512": medians["CLI 512"] / medians["Pillow 512"],
        "CLI 512 / pyvips 512": medians["CLI 512"] / medians["pyvips 512"],
    }
    print(f"medians of {args.repeat} fresh processes, alternating\n")
    for name, value in medians.items():
        print(f"{name:18} {value * 1000:8.1f} ms")
    print()
    for name, value in ratios.items():
        print(f"{name:28} {value:5.2f}  (goal: at most {GOALS[name]}: {'met' if value <= GOALS[name] else 'missed'})")
    result = {
        "machine": machine(),
        "repeat": args.repeat,
        "median_ms": {name: round(value * 1000, 1) for name, value in medians.items()},
        "samples_ms": {name: [round(v * 1000, 1) for v in values] for name, values in samples.items()},
        "goals": [{"measure": name, "value": round(value, 3), "goal": GOALS[name]} for name, value in ratios.items()],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
