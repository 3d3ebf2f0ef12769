"""Load on the local mirror: N concurrent clients each submit 1024x1024 jobs
and poll them to completion against a server started here on loopback.
Prints jobs per second and enqueue / end-to-end latency percentiles.

    .venv/bin/python benchmarks/bench_server.py [--clients 8] [--jobs 64]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from common_results import machine  # noqa: E402

SECRET = "bench-bench-bench-bench-bench-32"
SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=64, help="jobs in all")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    images = REPO / "fixtures" / "images"
    body = {
        "canvas_size": "1024x1024",
        "color_code": "#aafbe3",
        "template_url": (images / "template.jpg").as_uri(),
        "modify_template_size": "1021x1021",
        "overlay_template_x": 546,
        "overlay_template_y": 0,
        "origin_img": (images / "foreground.png").as_uri(),
        "modify_origin_img_size": "817x1021",
        "overlay_origin_x": -19,
        "overlay_origin_y": -22,
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="compositor-load-"))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "compositor.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--client",
            f"bench:{SECRET}",
            "--workers",
            str(args.workers),
            "--allow-file-root",
            str(images),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        enqueue: list[float] = []
        end_to_end: list[float] = []

        def one_client(count: int) -> None:
            with httpx.Client(base_url=base, headers={"x-api-key": SECRET}, timeout=60) as http:
                for _ in range(count):
                    start = time.perf_counter()
                    answer = http.post(SUBMIT, json=body).json()
                    enqueue.append(time.perf_counter() - start)
                    job_id = answer["data"]["_id"]
                    delay = 0.05
                    while True:
                        record = http.get(INFO, params={"image_model_id": job_id}).json()["data"]
                        if record["image_status"] in (3, 4):
                            break
                        time.sleep(delay)
                        delay = min(delay * 1.5, 0.5)
                    if record["image_status"] != 3:
                        raise SystemExit(f"job failed: {record['error_reasons']}")
                    end_to_end.append(time.perf_counter() - start)

        per_client = [args.jobs // args.clients + (i < args.jobs % args.clients) for i in range(args.clients)]
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one_client, per_client))
        elapsed = time.perf_counter() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)

    result = {
        "clients": args.clients,
        "jobs": args.jobs,
        "workers": args.workers,
        "jobs_per_s": args.jobs / elapsed,
        "enqueue_p50_ms": 1000 * statistics.median(enqueue),
        "enqueue_p99_ms": 1000 * percentile(enqueue, 99),
        "end_to_end_p50_s": statistics.median(end_to_end),
        "end_to_end_p99_s": percentile(end_to_end, 99),
        "machine": machine(),
    }
    print(f"{args.jobs} jobs of 1024x1024 from {args.clients} clients, {args.workers} render workers, {elapsed:.1f} s")
    print(f"  throughput        {result['jobs_per_s']:.2f} jobs/s")
    print(f"  enqueue latency   p50 {result['enqueue_p50_ms']:.1f} ms   p99 {result['enqueue_p99_ms']:.1f} ms")
    print(f"  end-to-end        p50 {result['end_to_end_p50_s']:.2f} s    p99 {result['end_to_end_p99_s']:.2f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
