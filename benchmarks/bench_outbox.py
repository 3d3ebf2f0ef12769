"""The webhook outbox against a dead receiver's backlog: the same load on a
mirror started here on loopback, once with an empty outbox and once with
10,000 notices pending to a receiver whose port is closed (written into the
data dir before the start, as a backlog left by earlier jobs). Prints submit
latency, completion rate and webhooks delivered for each, and their ratios;
the goal is that the backlog costs at most 20% on submit p99 and on the
completion rate. Then the store's due-notice query alone, timed with and
without the backlog.

    .venv/bin/python benchmarks/bench_outbox.py [--seconds 30] [--threads 4] [--backlog 10000]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from compositor.mirror.accounts import Client  # noqa: E402
from compositor.mirror.database import now_ms  # noqa: E402
from compositor.mirror.jobs import COMPLETED, PROCESSING, JobStore  # noqa: E402
from compositor.mirror.outbox import queue_notice  # noqa: E402

SECRET = "bench-bench-bench-bench-bench-32"
CLIENT = Client("bench", SECRET)
SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"
IMAGES = REPO / "fixtures" / "images"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def write_backlog(data_dir: Path, count: int, dead_url: str) -> None:
    """`count` finished jobs whose notices (processing, completed) are all still owed to `dead_url`."""
    store = JobStore(data_dir / "jobs.sqlite3")
    body = {"canvas_size": "8x8", "webhookUrl": dead_url}
    jobs = [store.create(CLIENT, body) for _ in range(count)]
    with store._database.transaction() as db:
        for job in jobs:
            db.execute("UPDATE jobs SET status = ?, image_url = 'u' WHERE id = ?", (COMPLETED, job.id))
            queue_notice(db, job.id, job.client_id, dead_url, PROCESSING, None, once=True)
            queue_notice(db, job.id, job.client_id, dead_url, COMPLETED, "u")
    store.close()


class Receiver(http.server.BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with Receiver.lock:
            Receiver.received += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def run_load(backlog: int, seconds: float, threads: int, workers: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="compositor-outbox-"))
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there: every attempt is refused
    if backlog:
        write_backlog(data, backlog, dead)
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Receiver.received = 0
    live = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    port = free_port()
    config = data / "mirror.toml"
    config.write_text(f'[[client]]\nid = "bench"\nsecret = "{SECRET}"\n')
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "compositor.cli", "serve", "--port", str(port), "--data-dir", str(data)),
            *("--config", str(config), "--workers", str(workers), "--allow-file-root", str(IMAGES)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    body = {
        "canvas_size": "64x64",
        "color_code": "#336699",
        "origin_img": (IMAGES / "foreground.png").as_uri(),
        "modify_origin_img_size": "48x48",
        "overlay_origin_x": 8,
        "overlay_origin_y": 8,
        "webhookUrl": live,
    }
    submits: list[float] = []
    submitted: list[str] = []
    lock = threading.Lock()
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        stop_at = time.monotonic() + seconds

        def submitter() -> None:
            with httpx.Client(base_url=base, headers={"x-api-key": SECRET}, timeout=60) as api:
                while time.monotonic() < stop_at:
                    started = time.perf_counter()
                    answer = api.post(SUBMIT, json=body).json()
                    elapsed = time.perf_counter() - started
                    with lock:
                        submits.append(elapsed)
                        submitted.append(answer["data"]["_id"])

        pool = [threading.Thread(target=submitter) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        jobs = httpx.get(base + "/_mirror/jobs", timeout=60).json()["jobs"]
        mine = set(submitted)
        completed = sum(1 for job in jobs if job["_id"] in mine and job["image_status"] == 3)
        delivered = Receiver.received
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        receiver.shutdown()
    return {
        "backlog": backlog,
        "submitted": len(submitted),
        "completed": completed,
        "completed_per_s": completed / seconds,
        "webhooks_delivered": delivered,
        "submit_p50_ms": 1000 * statistics.median(submits),
        "submit_p99_ms": 1000 * percentile(submits, 99),
    }


def time_due_query(backlog: int, repeats: int = 200) -> float:
    """Milliseconds per due-notice query with `backlog` notices pending in a lane that is backing off."""
    data = Path(tempfile.mkdtemp(prefix="compositor-outbox-query-"))
    dead = f"http://127.0.0.1:{free_port()}/hook"
    write_backlog(data, backlog, dead)
    store = JobStore(data / "jobs.sqlite3")
    if backlog:
        [probe] = store.outbox.due_notices(now_ms(), set(), limit=1, per_lane=1)
        store.outbox.notice_attempted(
            probe.id,
            delivered=False,
            http_status=None,
            error="refused",
            retry_at_ms=now_ms(),
            lane_delay_ms=lambda _: 60_000,
        )
    started = time.perf_counter()
    for _ in range(repeats):
        store.outbox.due_notices(now_ms(), set(), limit=32)
    elapsed = (time.perf_counter() - started) / repeats
    store.close()
    return 1000 * elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    without = run_load(0, args.seconds, args.threads, args.workers)
    with_backlog = run_load(args.backlog, args.seconds, args.threads, args.workers)
    query_empty = time_due_query(0)
    query_backlog = time_due_query(args.backlog)
    p99_ratio = with_backlog["submit_p99_ms"] / without["submit_p99_ms"]
    rate_ratio = with_backlog["completed_per_s"] / without["completed_per_s"]
    print(f"{args.threads} threads submitting 64x64 jobs for {args.seconds:.0f} s, {args.workers} render workers")
    print(f"{'':24}{'submitted':>10}{'done/s':>9}{'hooks':>8}{'p50 ms':>9}{'p99 ms':>9}")
    for name, run in (("empty outbox", without), (f"{args.backlog} dead notices", with_backlog)):
        print(
            f"  {name:22}{run['submitted']:>10}{run['completed_per_s']:>9.1f}{run['webhooks_delivered']:>8}"
            f"{run['submit_p50_ms']:>9.1f}{run['submit_p99_ms']:>9.1f}"
        )
    print(f"  submit p99 with the backlog / without: {p99_ratio:.2f} (goal <= 1.20)")
    print(f"  completion rate with / without:        {rate_ratio:.2f} (goal >= 0.80)")
    print(f"  due-notice query: {query_empty:.3f} ms empty, {query_backlog:.3f} ms with {args.backlog} pending")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "seconds": args.seconds,
            "threads": args.threads,
            "workers": args.workers,
            "without_backlog": without,
            "with_backlog": with_backlog,
            "submit_p99_ratio": p99_ratio,
            "completion_rate_ratio": rate_ratio,
            "due_query_ms_empty": query_empty,
            "due_query_ms_backlog": query_backlog,
        }
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
