"""Overload behaviour of ``msir-serve``: 1, 16 and 128 concurrent clients searching the demo collection.

What it measures, per level and per configuration, over real HTTP on loopback:

* throughput: accepted (200) searches per second;
* p50 / p99 latency of the accepted searches, as the client sees them;
* share shed: the share of answers that were 503 + Retry-After (admission control: ``MSIR_MAX_IN_FLIGHT``,
  ``MSIR_MAX_QUEUED``, ``MSIR_QUEUE_TIMEOUT_S``); any other status is counted and reported as an error.

Two configurations: the service's defaults (admission control on), and the same server with the cap lifted
(``MSIR_MAX_IN_FLIGHT=100000``: every request queues, which is how the service behaved before). Each client keeps
one request in flight (closed loop); a client that was shed waits the Retry-After it was given, times a random
factor in [0.5, 1.5) (or ``--backoff`` seconds), before its next request.

The collection is the demo's (``demo/images``, 1,000 CIFAR-10 JPEGs, indexed with the shipped
``demo/checkpoint``), built once under ``~/.cache/msir/collections/overload-demo``; the queries are those JPEGs.
The load generator runs on the same machine and shares its cores with the server: on the project's 2-core
machine (shared with other work: the load average is recorded) that is part of what the numbers show.

Results: ``results/benchmarks/overload_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.quickstart import prepare_collection  # noqa: E402
from app.settings import Settings  # noqa: E402
from benchmarks.serve_latency import multipart, save_report, start_server  # noqa: E402
from training.runinfo import cpu_name, git_sha  # noqa: E402

DEMO_IMAGES = REPO / "demo" / "images"
DEMO_CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"
COLLECTION = Path("~/.cache/msir/collections/overload-demo").expanduser()


def level(url: str, queries: list[bytes], clients: int, seconds: float, backoff: float) -> dict[str, Any]:
    """``clients`` closed-loop clients for ``seconds`` (after a short warm-up); latencies of accepted searches.

    Each client is a thread with one keep-alive ``http.client`` connection sending prebuilt multipart bodies (as in
    benchmarks/serve_latency.py): the load generator shares the 2 cores with the server. With an asyncio httpx
    client instead, the same server measured p99 5.3 s and 104 req/s at 128 clients against 273 req/s at 16: the
    generator's own CPU work, not the server's queueing."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    host, port = url.removeprefix("http://").split(":")
    bodies = [multipart(q, 10) for q in queries]
    phase = {"stop_at": 0.0, "recording": False}

    def one_client(c: int) -> None:
        rng = random.Random(clients * 1000 + c)
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        i = c
        try:
            while time.monotonic() < phase["stop_at"]:
                body, ctype = bodies[i % len(bodies)]
                i += clients
                started = time.perf_counter()
                retry_after = 1.0
                status = -1
                # A connection the server closed after its last answer fails at once: sent again on a new one, as
                # httpx and urllib3 do with a stale pooled connection (only a failure on a fresh one counts).
                for attempt in (1, 2):
                    try:
                        conn.request("POST", "/v1/search", body=body, headers={"Content-Type": ctype})
                        response = conn.getresponse()
                        response.read()
                        status = response.status
                        retry_after = float(response.getheader("retry-after", "1"))
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        conn = http.client.HTTPConnection(host, int(port), timeout=60)
                        if attempt == 2:
                            status = -1
                elapsed = time.perf_counter() - started
                with lock:
                    if phase["recording"]:
                        statuses[status] += 1
                        if status == 200:
                            latencies.append(elapsed)
                if status == 503:
                    # A well-behaved client honours Retry-After, with jitter so that the shed clients do not come
                    # back as one herd; --backoff overrides it (a retry storm when short).
                    time.sleep(backoff if backoff >= 0 else retry_after * rng.uniform(0.5, 1.5))
        finally:
            conn.close()

    def run_for(duration: float) -> float:
        phase["stop_at"] = time.monotonic() + duration
        threads = [threading.Thread(target=one_client, args=(c,), daemon=True) for c in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.monotonic() - started

    run_for(min(3.0, seconds / 3))  # warm-up: connections, caches
    phase["recording"] = True
    wall = run_for(seconds)
    total = sum(statuses.values())
    ms = np.asarray(latencies) * 1000.0
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": total,
        "accepted": statuses[200],
        "throughput_per_s": round(statuses[200] / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
        "max_ms": round(float(ms.max()), 1) if len(ms) else None,
        "shed_share": round(statuses[503] / total, 3) if total else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def markdown(report: dict[str, Any]) -> str:
    backoff = "the Retry-After it got (x 0.5-1.5)" if report["backoff_s"] < 0 else f"{report['backoff_s']} s"
    lines = [
        "# Overload: POST /v1/search at 1 / 16 / 128 concurrent clients",
        "",
        f"Device: {report['device']} ({report['cpu_count']} cores, CPU only; the machine is shared with other "
        f"work: load average before / after {report['load_before']} / {report['load_after']}). Collection: the "
        f"demo's {report['collection_size']:,} images (model {report['model']}); queries: those JPEGs. Each client "
        f"keeps one request in flight; a shed client waits {backoff}. {report['seconds_per_level']} s "
        f"per level and configuration; the load generator runs on the same machine. Git {report['git_sha']}, "
        f"{report['date']}.",
        "",
        "| configuration | clients | accepted req/s | p50 ms (accepted) | p99 ms (accepted) | shed (503) | other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in report["runs"]:
        for r in run["levels"]:
            other = sum(v for k, v in r["statuses"].items() if k not in ("200", "503"))
            lines.append(
                f"| {run['label']} | {r['clients']} | {r['throughput_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                f"{100 * r['shed_share']:.1f}% | {other} |"
            )
    lines += [
        "",
        f"*admission on*: the defaults (MSIR_MAX_IN_FLIGHT={report['defaults']['max_in_flight']}, "
        f"MSIR_MAX_QUEUED={report['defaults']['max_queued']}, "
        f"MSIR_QUEUE_TIMEOUT_S={report['defaults']['queue_timeout_s']}). *no cap*: MSIR_MAX_IN_FLIGHT=100000 "
        "(every request waits its turn, the behaviour before admission control). *other*: answers that were "
        "neither 200 nor 503 (errors).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per level and configuration")
    parser.add_argument(
        "--backoff", type=float, default=-1.0, help="seconds a shed client waits (default: the Retry-After it got)"
    )
    parser.add_argument("--no-compare", action="store_true", help="only the defaults, not the uncapped server")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()
    load_before = [round(v, 2) for v in os.getloadavg()]
    demo = prepare_collection(DEMO_IMAGES, COLLECTION, DEMO_CHECKPOINT, device="cpu", progress=False)
    files = sorted(DEMO_IMAGES.rglob("*.jpg"))
    queries = [f.read_bytes() for f in files]
    # Every client of this benchmark shares one address: the per-client cap (MSIR_MAX_PER_CLIENT) is off here.
    configs = [("admission on (defaults)", {"MSIR_MAX_PER_CLIENT": "0"})]
    if not args.no_compare:
        configs.append(("no cap", {"MSIR_MAX_IN_FLIGHT": "100000", "MSIR_MAX_PER_CLIENT": "0"}))
    log_dir = args.out / "overload_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    servers: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        for i, (_, env) in enumerate(configs):
            servers.append(start_server(demo.directory, env, log_dir / f"server-{i}.log"))
        for (label, env), (_, url) in zip(configs, servers, strict=True):
            levels = []
            for clients in args.clients:
                result = level(url, queries, clients, args.seconds, args.backoff)
                print(label, json.dumps(result), flush=True)
                levels.append(result)
            runs.append({"label": label, "env": env, "levels": levels})
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(60)
    shutil.rmtree(log_dir, ignore_errors=True)
    defaults = Settings.model_fields
    from indexer import Collection

    with Collection.open(demo.directory, device="cpu") as col:
        model = col.embedder.meta.model_name
    report = {
        "benchmark": "overload",
        "device": cpu_name(),
        "device_type": "cpu",
        "cpu_count": os.cpu_count(),
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "collection_size": demo.images,
        "model": model,
        "seconds_per_level": args.seconds,
        "backoff_s": args.backoff,
        "defaults": {
            "max_in_flight": defaults["max_in_flight"].default,
            "max_queued": defaults["max_queued"].default,
            "queue_timeout_s": defaults["queue_timeout_s"].default,
        },
        "runs": runs,
    }
    save_report(args.out / "overload_cpu", report, markdown(report))


if __name__ == "__main__":
    main()
