"""What following the change feed costs a server, and how fast a server catches up with another process's writes.

What it measures, on one collection (``--base`` images) served by two real ``msir-serve`` processes at once, one
following the feed (``MSIR_SYNC_INTERVAL_MS``, default 500) and one not (``0``):

* search latency with following on and off in the same run, 1 client: ``GET /v1/images/{id}/neighbours`` (index +
  database, no model: where a following cost would show most) and ``POST /v1/search`` (decode + model + index),
  the two servers taking turns request by request so load from other work falls on both alike; p50/p99 and the
  overhead of following (p50 on / p50 off - 1);
* the catch-up of the following server while ``msir-index add`` (a separate process, the real CLI) adds ``--add``
  images: its lag over time, the time from the CLI's exit until the server's index holds every row, and the search
  latency on that server while it catches up (1 client);
* the apply time alone: a fresh index copy ``--add`` rows behind, caught up by one ``refresh()`` in this process.

The model is a seeded random-init ``mscfnet2`` at 32x32 and the images are generated (noise + shapes): latency and
catch-up do not depend on the weights. Everything (servers, CLI, client) shares the machine's cores.

Results: ``results/benchmarks/follow_cost_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from app import server_process as harness  # noqa: E402
from app.server_process import free_port  # noqa: E402
from indexer import Collection  # noqa: E402
from indexer.ingest.sources import from_folder  # noqa: E402
from indexer.manifest import MANIFEST_FILE  # noqa: E402
from indexer.vectors.faiss_index import INDEX_FILE  # noqa: E402
from models import PreprocessSpec, build, save_checkpoint  # noqa: E402
from training.runinfo import cpu_name, git_sha  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        lo = int(rng.integers(2, 12))
        arr[lo : lo + 12, lo : lo + 12] = rng.integers(0, 256, 3, dtype=np.uint8)
        Image.fromarray(arr, "RGB").save(folder / f"{seed}_{i:05d}.png")


def start_server(directory: Path, interval_ms: int, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env.update(
        MSIR_COLLECTION_DIR=str(directory), MSIR_HOST="127.0.0.1", MSIR_PORT=str(port), MSIR_DEVICE="cpu",
        MSIR_SYNC_INTERVAL_MS=str(interval_ms), MSIR_ACCESS_LOG="false", MSIR_LOG_LEVEL="warning",
        OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
    )  # fmt: skip
    server = harness.start_server([sys.executable, "-m", "app.cli"], port=port, log=log_dir / f"server-{port}.log",
                                  env=env, cwd=log_dir, timeout_s=180)  # fmt: skip
    return server.process, server.url


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def one_request(client: httpx.Client, kind: str, image_id: int, query: bytes) -> float:
    started = time.perf_counter()
    if kind == "neighbours":
        r = client.get(f"/v1/images/{image_id}/neighbours", params={"k": 10})
    else:
        r = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": "10"})
    elapsed = time.perf_counter() - started
    r.raise_for_status()
    return elapsed


def latency_on_off(urls: dict[str, str], ids: list[int], queries: list[bytes], n: int) -> dict[str, Any]:
    clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
    samples: dict[str, dict[str, list[float]]] = {k: {name: [] for name in urls} for k in ("neighbours", "search")}
    rng = np.random.default_rng(0)
    try:
        for kind in samples:
            for client in clients.values():  # warm-up
                for _ in range(10):
                    one_request(client, kind, ids[0], queries[0])
            for i in range(n):
                image_id, query = int(rng.choice(ids)), queries[i % len(queries)]
                order = list(clients.items()) if i % 2 == 0 else list(clients.items())[::-1]
                for name, client in order:
                    samples[kind][name].append(one_request(client, kind, image_id, query))
    finally:
        for client in clients.values():
            client.close()
    out: dict[str, Any] = {}
    for kind, by_server in samples.items():
        stats = {name: percentiles(v) for name, v in by_server.items()}
        stats["overhead_p50"] = round(stats["following"]["p50_ms"] / stats["not_following"]["p50_ms"] - 1, 4)
        # Requests were taken in back-to-back pairs: the median pair difference is the least noisy estimate on a
        # machine whose load changes from second to second.
        pairs = np.asarray(by_server["following"]) - np.asarray(by_server["not_following"])
        stats["paired_median_diff_ms"] = round(float(np.median(pairs)) * 1000.0, 3)
        stats["paired_overhead"] = round(stats["paired_median_diff_ms"] / stats["not_following"]["p50_ms"], 4)
        stats["overhead_p99"] = round(stats["following"]["p99_ms"] / stats["not_following"]["p99_ms"] - 1, 4)
        out[kind] = stats
    return out


def catch_up(directory: Path, add_dir: Path, url: str, off_url: str, expected: int, ids: list[int]) -> dict[str, Any]:
    """Run `msir-index add` and watch the following server catch up; 1 client searches it meanwhile."""
    trace: list[tuple[float, int, int]] = []
    latencies: dict[str, list[float]] = {"following": [], "not_following": []}
    stop = threading.Event()
    started = time.perf_counter()

    def watch() -> None:
        # /readyz only (vectors served and lag; no statistics scan), and on both servers alike, so the watching
        # itself loads them equally.
        with httpx.Client(base_url=url, timeout=30) as client, httpx.Client(base_url=off_url, timeout=30) as other:
            while not stop.is_set():
                ready = client.get("/readyz").json()
                other.get("/readyz")
                vectors = int(ready["checks"]["index"].split("(", 1)[1].split()[0])
                trace.append((time.perf_counter() - started, vectors, int(ready["sync"]["lag"])))
                time.sleep(0.1)

    def search() -> None:
        # Both servers, request by request: what following costs while it applies the add, apart from the CPU the
        # CLI takes from both.
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=url, timeout=60) as on, httpx.Client(base_url=off_url, timeout=60) as off:
            while not stop.is_set():  # paced (~10 pairs/s): a client, not a load test competing with the CLI
                image_id = int(rng.choice(ids))
                latencies["following"].append(one_request(on, "neighbours", image_id, b""))
                latencies["not_following"].append(one_request(off, "neighbours", image_id, b""))
                time.sleep(0.1)

    threads = [threading.Thread(target=watch), threading.Thread(target=search)]
    for t in threads:
        t.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "indexer.cli", "add", str(directory), "--folder", str(add_dir),
               "--workers", "1", "--device", "cpu", "--json"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    cli_exit = time.perf_counter() - started
    report = json.loads(done.stdout)
    converged = None
    deadline = time.perf_counter() + 120
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.perf_counter() < deadline:
            ready = client.get("/readyz").json()
            if f"{expected} vectors" in ready["checks"]["index"] and ready["sync"]["lag"] == 0:
                converged = time.perf_counter() - started
                break
            time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    off_size = httpx.get(f"{off_url}/readyz").json()["checks"]["index"]
    return {
        "cli_added": report["added"],
        "cli_wall_s": round(cli_exit, 3),
        "converged_after_cli_exit_s": None if converged is None else round(converged - cli_exit, 3),
        "max_lag_changes_seen": max((lag for _, _, lag in trace), default=0),
        "server_vectors_at_cli_exit": next((size for t, size, _ in reversed(trace) if t <= cli_exit), None),
        "neighbours_latency_during_add": {k: percentiles(v) for k, v in latencies.items() if v} or None,
        "not_following_server_index": off_size,
    }


def apply_time(directory: Path, snapshot: Path, url: str) -> dict[str, Any]:
    """A copy of the index files from before the add, caught up from the database by one refresh()."""
    started = time.perf_counter()
    col = Collection.open(snapshot, database_url=url, device="cpu", catch_up=False)
    opened = time.perf_counter() - started
    try:
        lag = col.store.head() - col.seq
        before = col.ntotal
        t0 = time.perf_counter()
        col.refresh()
        seconds = time.perf_counter() - t0
        return {"changes": lag, "vectors_before": before, "vectors_after": col.ntotal, "refresh_s": round(seconds, 3),
                "open_s": round(opened, 3)}  # fmt: skip
    finally:
        col.store.close()


def markdown(result: dict[str, Any]) -> str:
    lat, cu, ap = result["latency"], result["catch_up"], result["apply"]
    lines = [
        f"# Following the change feed: cost and catch-up ({result['device']})",
        "",
        f"Machine: {result['cpu']}, {result['cores']} cores shared with other work (servers, CLI and client on the "
        f"same cores). Collection: {result['base']} images + {result['added']} added by `msir-index add`; "
        f"sync interval {result['interval_ms']} ms; git {result['git_sha']}. Written by `benchmarks/follow_cost.py`.",
        "",
        "## Search latency, following on vs off (1 client, same run, alternating requests)",
        "",
        "| endpoint | following p50 | p99 | not following p50 | p99 | overhead p50 | overhead p99 | paired median |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, s in lat.items():
        on, off = s["following"], s["not_following"]
        lines.append(
            f"| {kind} | {on['p50_ms']:.2f} ms | {on['p99_ms']:.2f} ms | {off['p50_ms']:.2f} ms "
            f"| {off['p99_ms']:.2f} ms | {s['overhead_p50']:+.1%} | {s['overhead_p99']:+.1%} "
            f"| {s['paired_median_diff_ms']:+.3f} ms ({s['paired_overhead']:+.1%}) |"
        )
    during = cu["neighbours_latency_during_add"] or {}
    on_d, off_d = during.get("following", {}), during.get("not_following", {})
    lines += [
        "",
        "Overhead = following / not following - 1; paired median = median over request pairs (same query, back to "
        "back) of following - not following.",
        "",
        f"## Catch-up after `msir-index add` of {cu['cli_added']} images",
        "",
        f"- CLI wall time (decode + embed + commit): {cu['cli_wall_s']:.1f} s; the server followed while it ran "
        f"(largest lag seen: {cu['max_lag_changes_seen']} changes; {cu['server_vectors_at_cli_exit']} vectors "
        f"served when the CLI exited).",
        f"- Server index complete {cu['converged_after_cli_exit_s']} s after the CLI exited.",
        f"- Neighbours search during the add (1 client, alternating): following server p50 {on_d.get('p50_ms')} ms, "
        f"p99 {on_d.get('p99_ms')} ms; not-following server p50 {off_d.get('p50_ms')} ms, p99 {off_d.get('p99_ms')} "
        f"ms ({on_d.get('n')} requests each; the CLI's decoding and embedding take the same 2 cores).",
        f"- The server not following still serves: {cu['not_following_server_index']}.",
        f"- Apply alone: an index copy {ap['changes']} changes behind caught up by one `refresh()` in "
        f"{ap['refresh_s']:.2f} s ({ap['vectors_before']} -> {ap['vectors_after']} vectors).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=int, default=2000, help="images in the collection before the add")
    parser.add_argument("--add", type=int, default=10_000, help="images added by the CLI")
    parser.add_argument("--requests", type=int, default=400, help="requests per server and endpoint")
    parser.add_argument("--interval-ms", type=int, default=500)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()
    # SIGTERM (a timeout) unwinds through the finally below, so the servers started here are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="msir-follow-"))
    servers: list[subprocess.Popen[bytes]] = []
    try:
        log(f"writing {args.base} + {args.add} images under {work}")
        write_images(work / "base", args.base, 0)
        write_images(work / "add", args.add, 1)
        torch.manual_seed(0)
        model = build("mscfnet2", 10, image_size=32)
        spec = PreprocessSpec(image_size=(32, 32), channels=3, resize="stretch")
        ckpt = save_checkpoint(
            work / "ckpt" / "random", model, class_names=[str(i) for i in range(10)], preprocess=spec
        )
        directory = work / "col"
        log("building the base collection")
        with Collection.create(directory, ckpt, device="cpu") as col:
            col.add_source(from_folder(work / "base"), workers=1)
            ids = col.store.ids().tolist()
        snapshot = work / "snapshot"
        snapshot.mkdir()
        for name in (INDEX_FILE, MANIFEST_FILE):
            shutil.copy2(directory / name, snapshot / name)
        url = f"sqlite:///{directory / 'metadata.db'}"
        log("starting two servers (following on / off)")
        on, on_url = start_server(directory, args.interval_ms, work)
        servers.append(on)
        off, off_url = start_server(directory, 0, work)
        servers.append(off)
        queries = [(work / "base" / f"0_{i:05d}.png").read_bytes() for i in range(20)]
        log(f"latency: {args.requests} requests per server and endpoint")
        latency = latency_on_off({"following": on_url, "not_following": off_url}, ids, queries, args.requests)
        log(f"catch-up: msir-index add of {args.add} images")
        caught = catch_up(directory, work / "add", on_url, off_url, args.base + args.add, ids)
        log("apply time of a copy behind by the whole add")
        applied = apply_time(directory, snapshot, url)
    finally:
        for process in servers:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    device = f"{cpu_name().replace(' ', '-')}-{os.cpu_count()}cores"
    result = {
        "benchmark": "follow_cost",
        "device": device,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "note": "shared machine: other work ran on the same cores",
        "python": platform.python_version(),
        "git_sha": git_sha(),
        "base": args.base,
        "added": args.add,
        "interval_ms": args.interval_ms,
        "latency": latency,
        "catch_up": caught,
        "apply": applied,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"follow_cost_{device}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
