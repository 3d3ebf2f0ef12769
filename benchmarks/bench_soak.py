"""Soak: the mirror under steady load while things go wrong, as they do.

20 clients (each its own account) submit 512x512 jobs and poll them to the
end for --seconds (default 300). Every --kill-every seconds (default 30) one
render worker is killed with SIGKILL. A quarter of the jobs name a webhook
receiver that drips its answer (a byte every 0.5 s: far past the 10 s
deadline of an attempt), a sixth a dead receiver (a closed port), the rest a
fast receiver that records every notice. One submit in twenty is hostile: its
webhookUrl holds a lone surrogate (the JSON escape of U+DC80), which must be
refused with 1003 and stop nothing.

Prints and writes (--json): jobs submitted, completed, failed (with their
reasons), lost (never finished), duplicated (a second status-3 notice, or a
job id handed out twice), answers with a 5xx, submit latency, the fast
receiver's notice latency, and the server's RSS (main process and workers)
sampled every 5 s.

    .venv/bin/python benchmarks/bench_soak.py [--seconds 300] [--clients 20] [--kill-every 30]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

REPO = Path(__file__).resolve().parent.parent
SUBMIT = "/api/open/v3/content/image/bg/replace"
INFO = "/api/open/v3/content/image/infobymodelid"


def secret_of(index: int) -> str:
    return f"soak-client-{index:02d}".ljust(32, "x")


def decrypt(data: str, client_id: str, secret: str) -> dict[str, Any]:
    iv = client_id.encode()[:16].ljust(16, b"\0")
    decryptor = Cipher(algorithms.AES(secret.encode()), modes.CBC(iv)).decryptor()
    padded = decryptor.update(base64.b64decode(data)) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return dict(json.loads(unpadder.update(padded) + unpadder.finalize()))


class Receivers:
    """A fast receiver that records notices, and one that drips its answer."""

    def __init__(self, clients: int) -> None:
        self.notices: list[tuple[float, str, int]] = []  # (time, job id, status)
        self.dripped = 0
        self._lock = threading.Lock()
        receivers = self
        secrets = {f"soak-{i:02d}": secret_of(i) for i in range(clients)}

        class Fast(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                payload = json.loads(self.rfile.read(int(self.headers["content-length"])))
                client_id = self.path.rsplit("/", 1)[-1]
                message = decrypt(payload["dataEncrypt"], client_id, secrets[client_id])
                with receivers._lock:
                    receivers.notices.append((time.monotonic(), message["_id"], message["status"]))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Drip(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                with receivers._lock:
                    receivers.dripped += 1
                with contextlib.suppress(OSError):
                    for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n":
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.5)

            def log_message(self, *args: object) -> None:
                pass

        self.fast = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fast)
        self.drip = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
        with socket.socket() as probe:  # a port nothing listens on: every attempt is refused
            probe.bind(("127.0.0.1", 0))
            self.dead_port = probe.getsockname()[1]
        for server in (self.fast, self.drip):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def fast_url(self, client_id: str) -> str:
        return f"http://127.0.0.1:{self.fast.server_address[1]}/hook/{client_id}"

    def drip_url(self) -> str:
        return f"http://127.0.0.1:{self.drip.server_address[1]}/hook"

    def dead_url(self) -> str:
        return f"http://127.0.0.1:{self.dead_port}/hook"

    def close(self) -> None:
        self.fast.shutdown()
        self.drip.shutdown()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def workers_of(pid: int, kind: str) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = []
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{child}/comm").read_text().strip() == f"{kind}-worker":
                found.append(int(child))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    images = REPO / "fixtures" / "images"
    body = {
        "canvas_size": "512x512",
        "color_code": "#aafbe3",
        "template_url": (images / "template.jpg").as_uri(),
        "modify_template_size": "510x510",
        "overlay_template_x": 273,
        "overlay_template_y": 0,
        "origin_img": (images / "foreground.png").as_uri(),
        "modify_origin_img_size": "408x510",
        "overlay_origin_x": -9,
        "overlay_origin_y": -11,
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = Path(tempfile.mkdtemp(prefix="compositor-soak-"))
    config = data / "mirror.toml"
    config.write_text(
        "webhook_first_delay_s = 1.0\nwebhook_attempts = 3\n"
        + "".join(f'[[client]]\nid = "soak-{i:02d}"\nsecret = "{secret_of(i)}"\n' for i in range(args.clients))
    )
    log = (data / "server.log").open("wb")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "compositor.cli", "serve", "--port", str(port), "--data-dir", str(data / "store")),
            *("--config", str(config), "--workers", str(args.workers), "--allow-file-root", str(images)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    receivers = Receivers(args.clients)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/openapi.json", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start: see " + str(data / "server.log"))
            time.sleep(0.2)
        return run(args, base, body, server, receivers, data)
    finally:
        receivers.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)


def run(
    args: argparse.Namespace,
    base: str,
    body: dict[str, Any],
    server: subprocess.Popen[bytes],
    receivers: Receivers,
    data: Path,
) -> int:
    submitted: list[str] = []
    submitted_at: dict[str, float] = {}
    finished: dict[str, dict[str, Any]] = {}
    answers: Counter[str] = Counter()
    submit_seconds: list[float] = []
    hostile = Counter[str]()
    lock = threading.Lock()
    stop_submitting = threading.Event()
    started = time.monotonic()

    def client(index: int) -> None:
        client_id = f"soak-{index:02d}"
        rng = random.Random(index)
        headers = {"x-api-key": secret_of(index)}
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop_submitting.is_set():
                roll = rng.random()
                if roll < 0.05:  # hostile: sent as the escape an attacker writes, which Python decodes to a surrogate
                    raw = json.dumps({**body, "webhookUrl": "http://127.0.0.1:9/\udc80"})
                    try:
                        answer = http.post(SUBMIT, content=raw, headers={**headers, "content-type": "application/json"})
                    except httpx.HTTPError as exc:
                        answers[f"hostile {type(exc).__name__}"] += 1
                        continue
                    with lock:
                        answers[f"hostile HTTP {answer.status_code} code {answer.json().get('code')}"] += 1
                        hostile["refused" if answer.json().get("code") == 1003 else "accepted"] += 1
                    continue
                if roll < 0.2:
                    hook = receivers.dead_url()
                elif roll < 0.45:
                    hook = receivers.drip_url()
                else:
                    hook = receivers.fast_url(client_id)
                try:
                    sent = time.perf_counter()
                    answer = http.post(SUBMIT, json={**body, "webhookUrl": hook}, headers=headers)
                except httpx.HTTPError as exc:
                    answers[f"submit {type(exc).__name__}"] += 1
                    continue
                with lock:
                    submit_seconds.append(time.perf_counter() - sent)
                    answers[f"submit HTTP {answer.status_code} code {answer.json().get('code')}"] += 1
                if answer.json().get("code") != 1000:
                    time.sleep(0.5)
                    continue
                job = answer.json()["data"]["_id"]
                with lock:
                    submitted.append(job)
                    submitted_at[job] = time.monotonic()
                poll(http, headers, job)

    def poll(http: httpx.Client, headers: dict[str, str], job: str, patience: float = 120) -> None:
        until = time.monotonic() + patience
        while time.monotonic() < until:
            time.sleep(0.25)
            try:
                record = http.get(INFO, params={"image_model_id": job}, headers=headers).json()
            except (httpx.HTTPError, ValueError):
                continue
            if record.get("code") == 1000 and record["data"]["image_status"] in (3, 4):
                with lock:
                    finished[job] = record["data"]
                return

    samples: list[dict[str, float]] = []
    kills: list[float] = []

    def monitor() -> None:
        next_kill = started + args.kill_every
        while not stop_submitting.is_set():
            now = time.monotonic()
            renders = workers_of(server.pid, "render")
            samples.append(
                {
                    "t": round(now - started, 1),
                    "server_mb": round(rss_mb(server.pid), 1),
                    "workers_mb": round(sum(rss_mb(p) for p in [*renders, *workers_of(server.pid, "preview")]), 1),
                    "completed": sum(1 for r in list(finished.values()) if r["image_status"] == 3),
                }
            )
            if now >= next_kill and renders:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(random.choice(renders), signal.SIGKILL)
                kills.append(round(now - started, 1))
                next_kill += args.kill_every
            stop_submitting.wait(5)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(args.clients)]
    watcher = threading.Thread(target=monitor, daemon=True)
    for thread in [*threads, watcher]:
        thread.start()
    time.sleep(args.seconds)
    stop_submitting.set()
    for thread in threads:
        thread.join(timeout=150)
    watcher.join(timeout=10)
    elapsed = time.monotonic() - started
    time.sleep(15)  # the last notices

    statuses = Counter(record["image_status"] for record in finished.values())
    reasons = Counter(reason for record in finished.values() for reason in record.get("error_reasons", []))
    lost = [job for job in submitted if job not in finished]
    status3_notices = Counter(job for _, job, status in receivers.notices if status == 3)
    duplicated_notices = sum(1 for count in status3_notices.values() if count > 1)
    duplicated_ids = len(submitted) - len(set(submitted))
    first_notice: dict[str, float] = {}
    for at, job, status in receivers.notices:
        if status == 3:
            first_notice.setdefault(job, at)
    latencies = [first_notice[j] - submitted_at[j] for j in first_notice if j in submitted_at]
    result = {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "workers_killed": len(kills),
        "kills_at_s": kills,
        "submitted": len(submitted),
        "completed": statuses.get(3, 0),
        "failed": statuses.get(4, 0),
        "failure_reasons": dict(reasons),
        "lost": len(lost),
        "duplicated_ids": duplicated_ids,
        "duplicated_status3_notices": duplicated_notices,
        "jobs_per_second": round(statuses.get(3, 0) / elapsed, 2),
        "submit_answers": dict(answers),
        "answers_5xx": sum(n for answer, n in answers.items() if " HTTP 5" in answer),
        "hostile_submits": dict(hostile),
        "submit_ms": {
            "p50": round(1000 * statistics.median(submit_seconds), 1) if submit_seconds else None,
            "p99": round(1000 * sorted(submit_seconds)[int(0.99 * (len(submit_seconds) - 1))], 1)
            if submit_seconds
            else None,
        },
        "fast_notice_latency_s": {
            "p50": round(statistics.median(latencies), 2) if latencies else None,
            "p99": round(sorted(latencies)[int(0.99 * (len(latencies) - 1))], 2) if latencies else None,
        },
        "drip_receiver_attempts": receivers.dripped,
        "rss": samples,
        "server_alive": server.poll() is None,
    }
    print(f"soak: {result['seconds']} s, {args.clients} clients, {len(kills)} render workers killed")
    print(f"  jobs submitted {result['submitted']}, completed {result['completed']}, failed {result['failed']}")
    print(f"  lost {result['lost']}, duplicated ids {duplicated_ids}, duplicated status-3 notices {duplicated_notices}")
    print(
        f"  answers with a 5xx {result['answers_5xx']}; hostile submits {dict(hostile)};"
        f" submit p50/p99 {result['submit_ms']['p50']} / {result['submit_ms']['p99']} ms"
    )
    print(f"  {result['jobs_per_second']} jobs/s; fast receiver's status-3 notice p50/p99 after submit:"
          f" {result['fast_notice_latency_s']['p50']} / {result['fast_notice_latency_s']['p99']} s")  # fmt: skip
    if reasons:
        print("  failure reasons: " + "; ".join(f"{n}x {r}" for r, n in reasons.items()))
    if samples:
        first, peak, last = samples[0], max(samples, key=lambda s: s["server_mb"]), samples[-1]
        print(
            f"  server RSS: {first['server_mb']} MB at {first['t']} s, peak {peak['server_mb']} MB,"
            f" {last['server_mb']} MB at {last['t']} s (ratio last/first {last['server_mb'] / first['server_mb']:.2f});"
            f" workers {first['workers_mb']} -> {last['workers_mb']} MB"
        )
    print(f"  server log: {data / 'server.log'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    clean = result["lost"] == 0 and duplicated_ids == 0 and duplicated_notices == 0 and result["answers_5xx"] == 0
    return 0 if clean and not hostile.get("accepted") else 1


if __name__ == "__main__":
    sys.exit(main())
