"""Search latency at the floor: msir's ``/v1/search`` as it runs by default (``MSIR_RUNTIME`` unset: auto, ONNX
Runtime when the export verifies) and with ``MSIR_RUNTIME=torch``, beside the in-process floor and the naive peer
endpoint, in one run, on the demo model over the ``make demo`` collection (the 1,000 images of ``demo/images/``) or,
with ``--size N``, the first N CIFAR-10 training images (CPU).

What it measures, side by side:

* **floor**: decode + preprocess + forward pass + search (``indexer.Collection``: FAISS and the neighbours' rows) in
  one Python loop, no HTTP: once with each runtime;
* **naive peer** (``benchmarks/naive_peer.py``): the 30-line endpoint a user writes first: a plain ``def`` FastAPI
  route, Pillow decode, the same checkpoint and preprocessing through ``models``, ``IndexFlatIP`` over the same
  vectors, no batching and no database;
* **msir default** / **msir torch**: ``msir-serve`` with its default settings (the runtime it picks itself, making
  and verifying the ONNX export on first start) / with ``MSIR_RUNTIME=torch``, micro-batching on, answering the full
  ``/v1/search`` (hash, metadata rows, kNN vote, timings);
* **first query**: the latency of the first search each msir server answers after ``/readyz`` said ready (on a new
  connection, as a user's first), the median over ``--starts`` starts, against its steady-state p50 at 1 client
  (the warm-up's goal: at most 2x).

The HTTP paths run at 1, 4 and 16 concurrent clients (each keeps one request in flight, on a keep-alive
connection; requests are prebuilt multipart bodies sent with ``http.client`` from threads, so the load generator
costs as little CPU as possible: it shares the machine's cores with the servers). The generator's own CPU time per
request (``time.process_time`` of this process over each block) is reported beside every row, so a generator that
becomes the bottleneck shows. All servers are up at once and
take turns in short blocks, so load from other work on a shared machine falls on all of them alike; the load
average before and after is recorded.

The model is the demo checkpoint (``demo/checkpoint/``, MSCFNet-4) unless ``--checkpoint`` is given; the collection
(``--collection``, or one built once under ``~/.cache/msir/collections/``) holds ``demo/images/`` as ``make demo``
indexes them, or the first ``--size`` CIFAR-10 *train* images of ``../shared/datasets/cifar10-jpg.tar``; queries
are CIFAR-10 *test* JPEGs.

Results: ``results/benchmarks/serve_latency_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import torch  # noqa: E402

from app import server_process as harness  # noqa: E402
from app.server_process import free_port  # noqa: E402
from app.settings import Settings  # noqa: E402
from indexer import Collection  # noqa: E402
from models import open_image, to_uint8  # noqa: E402
from msir_core.allocator import keep_freed_buffers  # noqa: E402
from training.runinfo import cpu_name, git_sha  # noqa: E402

TAR = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar"
CACHE = Path("~/.cache/msir").expanduser()
DEMO_CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"
DEMO_IMAGES = REPO / "demo" / "images"
STAGES = {"decode": ("decode", "preprocess"), "model": ("embed",), "faiss": ("search",), "database": ("database",)}
PATHS = ("naive peer", "msir default", "msir torch")
FLOORS = {"default": "auto", "torch": "torch"}  # floor name -> the runtime it opens the collection with


def extract(tar: Path, cache: Path) -> Path:
    target = cache / "cifar10"
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".cifar10-{os.getpid()}"
    with tarfile.open(tar) as archive:
        archive.extractall(tmp, filter="data")
    if not target.exists():
        os.replace(tmp / "cifar10", target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_copy(source: Path) -> Path:
    """The checkpoint copied under ~/.cache/msir (so that the ONNX export runtime auto caches beside it is not
    written into the repository)."""
    target_dir = CACHE / "checkpoints" / f"serve-latency-{source.stem}"
    target_dir.mkdir(parents=True, exist_ok=True)
    for path in (source, source.with_suffix(".json")):
        if not (target_dir / path.name).is_file():
            shutil.copy2(path, target_dir / path.name)
    return target_dir / source.name


def build_collection(directory: Path, checkpoint: Path, data: Path, limit: int | None) -> None:
    """``limit`` CIFAR-10 train images from ``data``, or (None) the demo images as ``make demo`` indexes them."""
    what = "the demo images" if limit is None else f"{limit} CIFAR-10 train images"
    print(f"building {directory} ({what}) with msir-index build ...", flush=True)
    command = [sys.executable, "-m", "indexer.cli", "build", str(directory), "--checkpoint", str(checkpoint)]
    if limit is None:
        command += ["--data", str(DEMO_IMAGES), "--device", "cpu"]
    else:
        command += ["--data", str(data), "--split", "train", "--limit", str(limit), "--device", "cpu"]
    command += ["--json"]  # the default runtime, as a user's build
    subprocess.run(command, check=True, cwd=REPO)


def start_server(collection: Path, overrides: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real msir-serve process, or the naive peer with ``overrides={"naive": "1"}``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env.update(
        MSIR_COLLECTION_DIR=str(collection),
        MSIR_PORT=str(port),
        MSIR_DEVICE="cpu",
        MSIR_ACCESS_LOG="false",
        MSIR_LOG_LEVEL="warning",
        MSIR_THUMBNAIL_CACHE_DIR=str(log.parent / "thumbs"),
        **overrides,
    )
    if overrides.get("naive"):
        command = [sys.executable, str(REPO / "benchmarks" / "naive_peer.py"), "--collection", str(collection)]
        command += ["--port", str(port)]
        probe = "/docs"
    else:
        command, probe = [sys.executable, "-m", "app.cli"], "/readyz"
    try:
        server = harness.start_server(command, port=port, log=log, env=env, cwd=REPO, probe=probe, timeout_s=300,
                                      poll_s=0.5)  # fmt: skip
    except harness.ServerNotReady as error:
        raise SystemExit(str(error)) from None
    return server.process, server.url


def summarise(
    latencies_s: list[float], wall_s: float, timings: list[dict[str, float]], generator_cpu_s: float | None = None
) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000.0
    out: dict[str, Any] = {
        "requests": len(ms),
        **(
            {"generator_cpu_ms_per_request": round(generator_cpu_s * 1000.0 / max(len(ms), 1), 3)}
            if generator_cpu_s is not None
            else {}
        ),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
        "requests_per_s": round(len(ms) / wall_s, 1),
    }
    if timings:
        mean_total = float(ms.mean())
        shares = {}
        for name, keys in STAGES.items():
            stage = float(np.mean([sum(t.get(k, 0.0) for k in keys) for t in timings]))
            shares[name] = round(stage / mean_total, 3)
        shares["http_and_other"] = round(max(0.0, 1.0 - sum(shares.values())), 3)
        out["share_of_latency"] = shares
        out["mean_stage_ms"] = {
            k: round(float(np.mean([t.get(k, 0.0) for t in timings])), 2)
            for k in ("decode", "preprocess", "embed", "search", "database", "total")
        }
    return out


def save_report(stem: Path, report: dict[str, Any], text: str) -> None:
    """``<stem>.json`` and ``<stem>.md``, and the Markdown on stdout."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    print(text)
    print(f"saved {stem}.json and {stem}.md")


def multipart(data: bytes, k: int) -> tuple[bytes, str]:
    """A prebuilt multipart/form-data body (the image and ``k``) and its content type."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@dataclass
class Block:
    latencies: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    generator_cpu_s: float = 0.0  # CPU time of this process (the load generator) while the block ran

    def merge(self, other: Block) -> None:
        self.latencies += other.latencies
        self.timings += other.timings
        self.wall_s += other.wall_s
        self.generator_cpu_s += other.generator_cpu_s


def http_block(
    url: str, path: str, bodies: list[tuple[bytes, str]], concurrency: int, n: int, offset: int, warm_up: int = 2
) -> Block:
    """``n`` searches by ``concurrency`` clients (threads, each with one keep-alive connection and one request in
    flight) after ``warm_up`` untimed ones each; latencies, the server's timings (msir) and the wall time."""
    block = Block()
    host, port = url.removeprefix("http://").split(":")
    per = max(1, n // concurrency)
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    errors: list[str] = []

    def client(w: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        latencies, timings = [], []
        try:
            for i in range(per + warm_up):
                if i == warm_up:
                    start.wait()  # the warm-up requests of every client, then all clients start together
                body, ctype = bodies[(offset + w * per + i) % len(bodies)]
                t0 = time.perf_counter()
                conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - t0
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {payload[:200]!r}")
                if i >= warm_up:
                    latencies.append(elapsed)
                    answer = json.loads(payload)
                    if "timings" in answer:
                        timings.append(answer["timings"])
        except BaseException as exc:
            errors.append(repr(exc))
            start.abort()
            raise
        finally:
            conn.close()
            with lock:
                block.latencies += latencies
                block.timings += timings

    threads = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(concurrency)]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: reported below
        start.wait()
    started, cpu_started = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    block.wall_s = time.perf_counter() - started
    # The whole process's CPU: nothing but the client threads runs in it during a block.
    block.generator_cpu_s = time.process_time() - cpu_started
    if errors:
        raise RuntimeError(f"load generator failed: {errors[0]}")
    return block


def python_floor(collection: Path, checkpoint: Path, runtime: str, queries: list[bytes], n: int, k: int) -> Block:
    """Decode + preprocess + embed + search through indexer.Collection, one query at a time, no HTTP."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    # The service's thread and malloc settings, so that the floor differs from the service by HTTP only.
    torch.set_num_threads(settings.torch_threads or torch.get_num_threads())
    keep_freed_buffers(settings.malloc_mmap_threshold_mb)
    faiss.omp_set_num_threads(settings.faiss_threads or faiss.omp_get_max_threads())
    block = Block()
    with Collection.open(collection, checkpoint=checkpoint, device="cpu", runtime=runtime) as col:
        spec = col.embedder.spec
        for i in range(n + 10):
            data = queries[i % len(queries)]
            t0 = time.perf_counter()
            x = to_uint8(open_image(data, max_pixels=settings.max_pixels), spec)[None]
            t1 = time.perf_counter()
            emb = col.embedder.embed_uint8(x).embeddings
            t2 = time.perf_counter()
            col.search(emb, k)
            t3 = time.perf_counter()
            if i >= 10:  # warm-up
                block.latencies.append(t3 - t0)
                ms = [1000 * (b - a) for a, b in ((t0, t1), (t1, t2), (t2, t3))]
                block.timings.append(dict(zip(("decode", "embed", "search"), ms, strict=True)))
    block.wall_s = sum(block.latencies)
    return block


def verdict(report: dict[str, Any]) -> list[str]:
    """The goals of issue #22 for the default server, each checked against the measured rows."""
    naive = {level["concurrency"]: level for level in report["http"]["naive peer"]}
    default = {level["concurrency"]: level for level in report["http"]["msir default"]}
    lines = []
    for c, level in default.items():
        peer = naive[c]
        ratio = level["p50_ms"] / peer["p50_ms"]
        throughput = level["requests_per_s"] / peer["requests_per_s"]
        goal = f"p50 {ratio:.2f}x the naive peer's (goal <= 0.6x): {'yes' if ratio <= 0.6 else 'NO'}"
        if c > 1:
            goal += f"; req/s {throughput:.2f}x (goal >= 1.5x): {'yes' if throughput >= 1.5 else 'NO'}"
        if c >= 16:
            below = level["p99_ms"] < peer["p99_ms"]
            goal += f"; p99 below the peer's: {'yes' if below else 'NO'}"
        lines.append(f"- msir default, {c} client(s): {goal}.")
    if 1 in default:
        floor = report["floor"]["default"]["p50_ms"]
        ratio = default[1]["p50_ms"] / floor
        lines.append(
            f"- msir default at 1 client: {ratio:.2f}x its in-process floor ({floor} ms; goal <= 1.3x): "
            f"{'yes' if ratio <= 1.3 else 'NO'}."
        )
        first = report["first_query_ms"]["msir default"]
        lines.append(
            f"- first query after /readyz (median of {len(report['first_query_samples_ms']['msir default'])} "
            f"starts): {first} ms = {first / default[1]['p50_ms']:.2f}x the steady-state p50 "
            f"(goal <= 2x): {'yes' if first <= 2 * default[1]['p50_ms'] else 'NO'}."
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Search latency at the floor: msir vs the naive peer",
        "",
        f"Device: {report['device']} ({report['cpu_count']} cores, CPU only, torch {report['torch']}, onnxruntime "
        f"{report['onnxruntime']}); **a shared machine**: load average before / after "
        f"{report['load_before']} / {report['load_after']} (other work was running; an idle machine gives lower "
        f"numbers for every row alike). Collection: {report['collection_size']:,} images ({report['source']}), "
        f"{report['index_type']} index, model {report['model']} (the demo checkpoint). k = {report['k']}; queries: "
        f"CIFAR-10 test JPEGs; {report['requests_per_level']} timed requests per row, in {report['rounds']} blocks "
        f"that alternate between the servers (all up at once). Git {report['git_sha']}, {report['date']}.",
        "",
        "| path | clients | p50 ms | p95 ms | p99 ms | req/s | p50 vs naive | generator CPU ms/req | decode | model "
        "| FAISS | database | HTTP + other |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    naive = {level["concurrency"]: level for level in report["http"]["naive peer"]}

    def row(path: str, clients: int, r: dict[str, Any], versus: str) -> str:
        s = r.get("share_of_latency")
        pct = (
            [f"{100 * s.get(k, 0):.0f}%" for k in ("decode", "model", "faiss", "database", "http_and_other")]
            if s
            else ["–"] * 5
        )
        return (
            f"| {path} | {clients} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['requests_per_s']} | "
            f"{versus} | {r.get('generator_cpu_ms_per_request', '–')} | " + " | ".join(pct) + " |"
        )

    for runtime, floor in report["floor"].items():
        lines.append(row(f"floor, in-process ({runtime})", 1, floor, "–"))
    for c in report["concurrency"]:
        for path in PATHS:
            level = next(level for level in report["http"][path] if level["concurrency"] == c)
            versus = "1.00x" if path == "naive peer" else f"{level['p50_ms'] / naive[c]['p50_ms']:.2f}x"
            lines.append(row(path, c, level, versus))
    lines += [
        "",
        "First query after `/readyz` said ready, on a new connection (ms, median of the starts; every start's in "
        "brackets): "
        + ", ".join(
            f"{name} {ms} ({', '.join(str(v) for v in report['first_query_samples_ms'][name])})"
            for name, ms in report["first_query_ms"].items()
        ),
        "",
        *verdict(report),
        "",
        "Shares are of the mean client-side latency, from each msir answer's own `timings` (the floor's from its "
        "loop); *model* includes any micro-batch wait, *database* the SQL reading the neighbours' rows, *HTTP + "
        "other* the rest (HTTP, multipart parsing, thread hand-offs, queueing). The naive peer reports no timings. "
        "The load generator runs on the same machine as the servers; its own CPU per request is the column "
        "*generator CPU*.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, help="collection directory (default: find or build one)")
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT, help="model (default: the demo's)")
    parser.add_argument("--size", type=int, help="N CIFAR-10 train images (default: the make demo collection)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per level")
    parser.add_argument("--starts", type=int, default=5, help="server starts whose first query is timed")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()

    print("machine: 2 shared CPU cores expected; load average", os.getloadavg(), flush=True)
    load_before = [round(v, 2) for v in os.getloadavg()]
    data = extract(TAR, CACHE / "datasets")
    checkpoint = checkpoint_copy(args.checkpoint)
    source = "the make demo images" if args.size is None else "CIFAR-10 train images"
    collection = args.collection or CACHE / "collections" / f"serve-latency-{checkpoint.stem}-{args.size or 'demo'}"
    if not (collection / "manifest.json").is_file():
        build_collection(collection, checkpoint, data, args.size)
    print(f"collection: {collection}", flush=True)
    test_files = sorted((data / "test").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    queries = [test_files[i].read_bytes() for i in rng.choice(len(test_files), 500, replace=False)]
    bodies = [multipart(q, args.k) for q in queries]

    with Collection.open(collection, checkpoint=checkpoint, device="cpu") as col:
        info = {"collection_size": col.ntotal, "index_type": col.index_type, "model": col.embedder.meta.model_name,
                "source": source}  # fmt: skip

    floors = {name: Block() for name in FLOORS}
    per_floor = max(1, args.requests // args.rounds)
    for r in range(args.rounds):
        for name, block in floors.items():
            block.merge(python_floor(collection, checkpoint, FLOORS[name], queries[r * 50 :], per_floor, args.k))
    print("floor", {k: summarise(v.latencies, v.wall_s, [])["p50_ms"] for k, v in floors.items()}, flush=True)

    configs = {
        "naive peer": {"naive": "1"},
        "msir default": {"MSIR_CHECKPOINT": str(checkpoint)},  # MSIR_RUNTIME unset, as a user starts it
        "msir torch": {"MSIR_RUNTIME": "torch", "MSIR_CHECKPOINT": str(checkpoint)},
    }
    log_dir = args.out / "serve_latency_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    results: dict[tuple[str, int], Block] = {}
    first_samples: dict[str, list[float]] = {}
    try:
        for i, (name, env) in enumerate(configs.items()):
            if name != "naive peer":
                # The first search after /readyz said ready, before any other request reaches the server (on a new
                # connection, as a user's): one sample per start is noise-prone, so the server is started
                # --starts times and the median is compared with the steady state.
                for start in range(args.starts):
                    server = start_server(collection, env, log_dir / f"server-{i}-start{start}.log")
                    try:
                        first = http_block(server[1], "/v1/search", bodies[-1 - start :], 1, 1, 0, warm_up=0)
                    finally:
                        server[0].terminate()
                        server[0].wait(60)
                    first_samples.setdefault(name, []).append(round(first.latencies[0] * 1000.0, 2))
            servers[name] = start_server(collection, env, log_dir / f"server-{i}.log")
        first_query = {name: round(float(np.median(v)), 2) for name, v in first_samples.items()}
        for c in args.concurrency:
            per_block = max(c, args.requests // args.rounds)
            for r in range(args.rounds):
                # Servers take turns (in a rotating order) so that other work on a shared machine falls on all.
                order = list(configs)[r % len(configs) :] + list(configs)[: r % len(configs)]
                for name in order:
                    path = "/search" if name == "naive peer" else "/v1/search"
                    block = http_block(servers[name][1], path, bodies, c, per_block, r * per_block)
                    results.setdefault((name, c), Block()).merge(block)
            print(f"{c} clients done", flush=True)
    finally:
        for process, _ in servers.values():
            process.terminate()
        for process, _ in servers.values():
            process.wait(60)
    shutil.rmtree(log_dir, ignore_errors=True)

    import onnxruntime

    report: dict[str, Any] = {
        "benchmark": "serve_latency",
        "device": cpu_name(),
        "device_type": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "k": args.k,
        "requests_per_level": args.requests,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "checkpoint": str(args.checkpoint),
        "collection": str(collection),
        **info,
        "floor": {
            name: summarise(b.latencies, b.wall_s, [{**t, "total": sum(t.values())} for t in b.timings])
            for name, b in floors.items()
        },
        "first_query_ms": first_query,
        "first_query_samples_ms": first_samples,
        "http": {
            name: [
                {
                    "concurrency": c,
                    **summarise(
                        results[(name, c)].latencies,
                        results[(name, c)].wall_s,
                        results[(name, c)].timings,
                        results[(name, c)].generator_cpu_s,
                    ),
                }
                for c in args.concurrency
            ]
            for name in configs
        },
    }
    save_report(args.out / "serve_latency_cpu", report, markdown(report))


if __name__ == "__main__":
    main()
