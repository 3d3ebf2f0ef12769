"""`compositor batch` on the local pool and on Dask, measured in one run.

Work: 200 bodies at 1024x1024 (the docs' example 3 scaled, photo-like
sources) and 20 with removeBg (u2netp on a 2048x2560 foreground). Each is
run, as a user would, with the CLI:

- the local pool with 1 and with 2 workers (scaling on the 2 cores);
- a Dask LocalCluster (2 worker processes, 1 thread each);
- `dask scheduler` and two `dask worker` processes started from the CLI.

Then the same 200 renders into a bucket (moto's S3 server on 127.0.0.1, in
this process: a stand-in for a real store, slower than one), where each
worker writes its own results: 1 and 2 workers.

Each comparison runs in a phase of its own, with only what it compares
alive (the local pool with 1 and 2 workers; each cluster beside the local
pool with 2 workers, its overhead taken against that phase's local runs;
the bucket with 1 and 2 workers). In a phase every run is warmed once, then
timed in rounds (3 by default) of all its runs in turn, so a machine that
drifts weighs on each alike; each figure is the median of its rounds.

Printed: items per second, the cluster's per-item overhead against the local
pool (goal: under 10%), the 1-to-2-worker speed-up (goal: at least 1.7x; at
least 1.8x with the workers writing to the bucket), the bytes of one item's
answer that reach the client (pickled, as they cross the pool's pipe: goal
under 2 KB when the workers write), and the client's peak RSS for 10,000
tiny items (through GNU time). For the local pool's runs it also prints
the cores each kept busy (the CPU seconds of the batch's process tree, its
workers included, over its wall seconds), and from that the most that 1 to
2 workers can gain on this machine. Writes benchmarks/results/batch.json
and docs/bench-batch.png. `--no-s3` leaves the bucket runs out.

    .venv/bin/python benchmarks/bench_batch.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_render  # noqa: E402
from common_results import machine  # noqa: E402

TINY = {
    "canvas_size": "4x4",
    "color_code": "#336699",
    "origin_img": "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
    "modify_origin_img_size": "2x2",
    "overlay_origin_x": 1,
    "overlay_origin_y": 1,
}


def workloads(folder: Path) -> dict[str, Path]:
    inputs = bench_render.make_inputs(REPO / "benchmarks" / "inputs")
    base = bench_render.scaled_example_3(inputs, 1024)
    renders = [{**base, "overlay_origin_x": base["overlay_origin_x"] + i % 40} for i in range(200)]
    removal = [
        {
            "canvas_size": "1024x1024",
            "color_code": "#aafbe3",
            "origin_img": str(inputs["foreground"]),
            "modify_origin_img_size": "800x1000",
            "overlay_origin_x": i,
            "overlay_origin_y": 12,
            "removeBg": True,
        }
        for i in range(20)
    ]
    files = {}
    for name, bodies in (("200 renders 1024", renders), ("20 removeBg", removal), ("10000 tiny", [TINY] * 10_000)):
        path = folder / f"{name.replace(' ', '-')}.jsonl"
        path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
        files[name] = path
    return files


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def local_cluster() -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=50,
    ) as cluster:
        yield cluster.scheduler_address


@contextlib.contextmanager
def cli_cluster() -> Iterator[str]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    processes = [
        subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port)], **quiet),
        subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "2", "--nthreads", "1"], **quiet),
    ]
    try:
        from distributed import Client

        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_batch(
    source: Path, outdir: Path | str, *extra: str, env: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """Wall seconds; CPU seconds of the batch's process tree (its client and, on the local pool, its workers,
    which it reaps); CPU seconds of this process meanwhile (moto's S3 server, when one runs here)."""
    if isinstance(outdir, Path):
        shutil.rmtree(outdir, ignore_errors=True)
    tree, harness = cpu_seconds(resource.RUSAGE_CHILDREN), cpu_seconds(resource.RUSAGE_SELF)
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "compositor"), "batch", str(source), "-o", str(outdir), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"batch failed: {done.stderr[-500:]}")
    return (
        seconds,
        cpu_seconds(resource.RUSAGE_CHILDREN) - tree,
        cpu_seconds(resource.RUSAGE_SELF) - harness,
    )


@contextlib.contextmanager
def s3_store() -> Iterator[tuple[dict[str, str], Any]]:
    """moto's S3 server on 127.0.0.1 (no credentials checked) and the environment that points batch at it."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on the harness's output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        client.create_bucket(Bucket="bench")
        yield env, client
    finally:
        server.stop()


def answer_bytes(body: dict[str, Any], work: Path, env: dict[str, str]) -> dict[str, int]:
    """The pickled answer of one item, as it crosses the pool's pipe to the client: the PNG in it when the
    client writes (a local folder on Dask), only the outcome when the worker writes (a bucket; a local folder on
    the local pool)."""
    script = (
        "import json, pickle, sys\n"
        "from compositor.batch import render_item\n"
        "from compositor.storage import open_location\n"
        "body = json.loads(sys.argv[1])\n"
        "local = render_item(body, '.', None, 'u2netp')\n"
        "stored = render_item(body, '.', None, 'u2netp', None, False, open_location('s3://bench/bytes'), 'one.png')\n"
        "print(json.dumps({'client writes': len(pickle.dumps(local)), 'workers write': len(pickle.dumps(stored))}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(body)], capture_output=True, text=True, env=env, cwd=work, check=True
    )
    return dict(json.loads(done.stdout))


def scaling(runs: dict[str, Any], cores: int) -> dict[str, dict[str, Any]]:
    """For 200 renders into a folder and into a bucket: the cores that 1 and 2 workers kept busy (their process
    tree's CPU seconds over wall seconds), the most 1 -> 2 workers could gain at the same CPU seconds (2 workers
    cannot keep more than the machine's cores busy), and the gain in each round (the two runs of a round are
    neighbours in time, so a machine that drifts shows as the spread between rounds)."""
    measured = {}
    for place, suffix in (("local folder", ""), ("bucket", ", into a bucket")):
        one, two = (runs.get(f"local pool, {n}{suffix}", {}).get("200 renders 1024") for n in ("1 worker", "2 workers"))
        if not one or not two or "cores_busy" not in one:
            continue
        measured[place] = {
            "cores_busy_1": one["cores_busy"],
            "cores_busy_2": two["cores_busy"],
            "ceiling": min(2, cores) / one["cores_busy"],
            "rounds": [a / b for a, b in zip(one["rounds"], two["rounds"], strict=True)],
        }
    return measured


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 3.8), width_ratios=(6, 5))
    for axis, workload in zip(axes, ("200 renders 1024", "20 removeBg"), strict=True):
        names = [n for n, run in results["runs"].items() if workload in run]  # the bucket runs: renders only
        rates = [results["runs"][n][workload]["items_per_s"] for n in names]
        axis.barh(names, rates, color="#4a7ab5")
        axis.set_title(f"{workload}: items/s ({results['cores']} cores)")
        for y, rate in enumerate(rates):
            axis.text(rate, y, f" {rate:.1f}", va="center")
        axis.set_xlim(0, max(rates) * 1.25)
    figure.tight_layout()
    figure.savefig(REPO / "docs" / "bench-batch.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "batch.json")
    parser.add_argument("--no-s3", action="store_true", help="leave out the runs into a bucket")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every run, alternating (default 3)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    files = workloads(work)
    timed = ("200 renders 1024", "20 removeBg")
    results: dict[str, Any] = {"cores": os.cpu_count(), "machine": machine(), "runs": {}}

    # Each comparison is timed in a phase of its own, with only what it compares alive: a cluster idling beside
    # a run (its heartbeats, the harness's event loop) costs that run CPU on 2 cores. Within a phase, each round
    # runs every configuration in turn, so a machine that drifts weighs on each alike; each figure is the median
    # of its rounds. The clusters' overheads are against the local pool's runs of their own phase.
    Run = tuple[str, tuple[str, ...], str, "dict[str, str] | None", tuple[str, ...]]
    renders_only = ("200 renders 1024",)  # the runs into a bucket time the renders only
    local_1: Run = ("local pool, 1 worker", ("--workers", "1"), "", None, timed)
    local_2: Run = ("local pool, 2 workers", ("--workers", "2"), "", None, timed)

    def phase(runs: list[Run]) -> dict[str, dict[str, dict[str, Any]]]:
        def one(run: Run, workload: str, folder: str) -> tuple[float, float, float]:
            _, extra, where, env, _ = run
            return run_batch(files[workload], f"{where}{folder}/" if where else work / folder, *extra, env=env)

        samples: dict[str, dict[str, list[tuple[float, float, float]]]] = {
            run[0]: {w: [] for w in run[4]} for run in runs
        }
        for run in runs:
            for workload in run[4]:
                one(run, workload, "warm")  # warm: caches, the model in every worker
        for _ in range(args.rounds):
            for run in runs:
                for workload in run[4]:
                    samples[run[0]][workload].append(one(run, workload, "out"))
        measured: dict[str, dict[str, dict[str, Any]]] = {}
        for run in runs:
            name, extra = run[0], run[1]
            measured[name] = {}
            for workload, rounds in samples[name].items():
                count = 200 if workload.startswith("200") else 20
                seconds = [wall for wall, _, _ in rounds]
                middle = statistics.median(seconds)
                entry: dict[str, Any] = {"seconds": middle, "items_per_s": count / middle, "rounds": seconds}
                if "--scheduler" not in extra:  # on Dask the workers are not in the batch's process tree
                    entry["cores_busy"] = statistics.median(cpu / wall for wall, cpu, _ in rounds)
                    entry["cpu_seconds"] = statistics.median(cpu for _, cpu, _ in rounds)
                if run[2]:  # into a bucket: moto's server ran in this process
                    entry["s3_server_cpu_seconds"] = statistics.median(server for _, _, server in rounds)
                measured[name][workload] = entry
        return measured

    results["runs"] |= phase([local_1, local_2])
    results["baselines"] = {}
    for name, cluster in (("Dask LocalCluster, 2 workers", local_cluster), ("dask scheduler + dask worker CLI, 2",
                                                                             cli_cluster)):  # fmt: skip
        with cluster() as address:
            measured = phase([local_2, (name, ("--scheduler", address), "", None, timed)])
        results["runs"][name] = measured[name]
        results["baselines"][name] = measured[local_2[0]]  # the local pool beside it, in its phase
    if not args.no_s3:
        with s3_store() as (env, _):
            results["runs"] |= phase(
                [
                    ("local pool, 1 worker, into a bucket", ("--workers", "1"), "s3://bench/", env, renders_only),
                    ("local pool, 2 workers, into a bucket", ("--workers", "2"), "s3://bench/", env, renders_only),
                ]
            )
            first = json.loads(files["200 renders 1024"].read_text().splitlines()[0])
            results["client_bytes_per_item_1024"] = answer_bytes(first, work, env)
    tiny_kib = bench_render.run_process(
        [str(BIN / "compositor"), "batch", str(files["10000 tiny"]), "-o", str(work / "tiny"), "--workers", "2"]
    )
    results["client_peak_mb_10000_items"] = tiny_kib / 1024

    print(f"{os.cpu_count()} cores; each run warmed once, then {args.rounds} rounds of its phase's runs in turn,"
          " medians; the CLI as a user runs it\n")  # fmt: skip
    print(f"{'run':38} " + " ".join(f"{w:>22}" for w in timed))
    for name, entry in results["runs"].items():
        cells = " ".join(
            f"{entry[w]['items_per_s']:10.2f} items/s {entry[w]['seconds']:6.1f}s" if w in entry else f"{'':>26}"
            for w in timed
        )  # the runs into a bucket time the renders only
        print(f"{name:38} {cells}")
    runs = results["runs"]
    local = runs["local pool, 2 workers"]
    goals = []
    for cluster in ("Dask LocalCluster, 2 workers", "dask scheduler + dask worker CLI, 2"):
        beside = results["baselines"][cluster]
        for workload in timed:
            overhead = runs[cluster][workload]["seconds"] / beside[workload]["seconds"] - 1
            goals.append((f"per-item overhead, {cluster}, {workload}", overhead, 0.10))
    for workload in timed:
        speedup = local[workload]["items_per_s"] / runs["local pool, 1 worker"][workload]["items_per_s"]
        goals.append((f"speed-up 1 -> 2 workers, {workload} (at least)", speedup, 1.7))
    if "local pool, 2 workers, into a bucket" in runs:
        into = [
            runs[f"local pool, {n}, into a bucket"]["200 renders 1024"]["items_per_s"]
            for n in ("1 worker", "2 workers")
        ]
        goals.append(
            ("speed-up 1 -> 2 workers writing to a bucket, 200 renders 1024 (at least)", into[1] / into[0], 1.8)
        )
        sent = results["client_bytes_per_item_1024"]
        goals.append(
            ("bytes of an item's answer to the client, workers writing, 1024x1024", sent["workers write"], 2048)
        )
        print(f"\nan item's answer to the client at 1024x1024: {sent['client writes']:,} bytes when the client writes,"
              f" {sent['workers write']:,} when the worker writes")  # fmt: skip
    results["goals"] = [{"measure": m, "value": v, "goal": g} for m, v, g in goals]
    results["scaling"] = scaling(runs, os.cpu_count() or 1)
    for place, measured in results["scaling"].items():
        print(f"200 renders into a {place}: 1 worker keeps {measured['cores_busy_1']:.2f} cores busy, 2 workers"
              f" {measured['cores_busy_2']:.2f}; at the same CPU seconds, 1 -> 2 workers could gain at most"
              f" {measured['ceiling']:.2f}x; round by round they gained"
              f" {', '.join(f'{r:.2f}x' for r in measured['rounds'])}")  # fmt: skip
    print(f"\nclient peak RSS, 10,000 tiny items: {results['client_peak_mb_10000_items']:.0f} MB\n")
    for measure_name, value, goal in goals:
        met = value >= goal if "at least" in measure_name else value <= goal
        print(f"{measure_name:78} {value:7.3f}  goal {'>=' if 'at least' in measure_name else '<='} {goal}  "
              f"{'met' if met else 'MISSED'}")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    plot(results)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
