"""removeBg on onnxruntime's CUDA provider against the CPU provider, on a
machine with a GPU: which providers the session got, whether the masks agree,
and the inference time of each (median of --repeat after a warm-up).

    python benchmarks/gpu_check.py [--model u2netp] [--repeat 20] [--json FILE]

Needs onnxruntime-gpu (its CUDA provider and the CUDA and cuDNN libraries it
loads). A machine without them reports the CPU fall-back and exits 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compositor.removebg import BackgroundRemover  # noqa: E402
from compositor.timings import StageTimings  # noqa: E402
from compositor.weights import get_spec, loadable_path  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="u2netp")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}: available {ort.get_available_providers()}")
    spec = get_spec(args.model)
    weights = loadable_path(args.model)
    image = Image.open(REPO / "fixtures" / "images" / "animal-2.jpg").convert("RGB")
    result: dict[str, object] = {"onnxruntime": ort.__version__, "model": args.model, "image": list(image.size)}
    masks = {}
    for device in ("cpu", "cuda"):
        remover = BackgroundRemover(spec, weights, device)
        remover.predict(image)  # warm-up: the CUDA provider builds its kernels on the first run
        seconds = []
        for _ in range(args.repeat):
            timings = StageTimings()
            started = time.perf_counter()
            masks[device] = np.asarray(remover.predict(image, timings), np.int16)
            seconds.append(time.perf_counter() - started)
        inference = timings.seconds.get("inference", 0.0)
        result[device] = {
            "active_providers": remover.active_providers,
            "predict_median_s": round(statistics.median(seconds), 4),
            "last_inference_s": round(inference, 4),
        }
        print(f"{device:5} providers {remover.active_providers}  predict median {statistics.median(seconds):.4f} s")
    difference = np.abs(masks["cpu"] - masks["cuda"])
    cpu_fg, gpu_fg = masks["cpu"] >= 128, masks["cuda"] >= 128
    iou = float((cpu_fg & gpu_fg).sum() / max((cpu_fg | gpu_fg).sum(), 1))
    result["mask_max_abs_difference"] = int(difference.max())
    result["mask_mean_abs_difference"] = round(float(difference.mean()), 4)
    result["mask_iou"] = round(iou, 5)
    print(f"masks: max |cpu - cuda| {difference.max()}, mean {difference.mean():.4f}, IoU {iou:.5f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    on_gpu = "CUDAExecutionProvider" in result["cuda"]["active_providers"]  # type: ignore[index]
    return 0 if on_gpu else 1


if __name__ == "__main__":
    raise SystemExit(main())
