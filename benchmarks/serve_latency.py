"""Search latency of the service on a 50,000-image CIFAR-10 collection (CPU by default).

What it measures:

* ``/v1/search`` over real HTTP on loopback against a real ``msir-serve`` process, at 1, 4 and 16 concurrent
  clients: p50/p95/p99 latency as the client sees it, requests/s, and the share of that latency spent in decoding
  (decode + preprocess), the model (embed, micro-batch wait included), FAISS and the database, from each answer's
  ``timings``. The rest is HTTP, multipart parsing and scheduling.
* The same searches through the Python API (``indexer.Collection``) without HTTP: the floor.
* Every HTTP level runs with micro-batching off (``MSIR_BATCH_MAX_SIZE=1``) and on (the settings' default), and
  with ``--compare-threads`` also with torch's and FAISS's own thread defaults (one per core) instead of the
  service's 1, so the defaults are measured, not guessed. All servers are up at once and the configurations take
  turns in short blocks, so load from other work on a shared machine falls on all of them alike.

The collection: ``--collection DIR`` if given; otherwise an existing collection of exactly 50,000 images found under
``~/.cache/msir`` is reused; otherwise one is built with ``msir-index build --split train --limit 50000`` from
``../shared/datasets/cifar10-jpg.tar`` (extracted once to ``~/.cache/msir/datasets/``). Without ``--checkpoint``
the model is a seeded random-init ``mscfnet2`` at 32x32: latency does not depend on the weights, accuracy is not
measured here. Queries are CIFAR-10 *test* images (real JPEG bytes). The load generator runs on the same machine
and shares its cores with the server: on a 2-core machine that is part of what the numbers show.

Results: ``results/benchmarks/serve_latency_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
import torch  # noqa: E402

from app.settings import Settings  # noqa: E402
from indexer import Collection  # noqa: E402
from models import PreprocessSpec, build, open_image, save_checkpoint, to_uint8  # noqa: E402
from training.runinfo import cpu_name, git_sha  # noqa: E402

TAR = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar"
CACHE = Path("~/.cache/msir").expanduser()
STAGES = {"decode": ("decode", "preprocess"), "model": ("embed",), "faiss": ("search",), "database": ("database",)}


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


def find_collection(size: int) -> Path | None:
    """This benchmark's own collection, else any collection under ~/.cache/msir of exactly ``size`` images (the
    indexer's benchmark may have built one; a bigger one would also hold the CIFAR-10 test images we query with)."""
    own = CACHE / "collections" / f"serve-latency-cifar10-{size}"
    candidates = [own / "manifest.json", *sorted(CACHE.rglob("manifest.json"))]
    for manifest in candidates:
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if meta.get("format") == "msir-collection" and int(meta.get("row_count", 0)) == size:
            return manifest.parent
    return None


def bench_checkpoint() -> Path:
    path = CACHE / "checkpoints" / "serve-bench-mscfnet2"
    if path.with_suffix(".json").is_file():
        return path.with_suffix(".safetensors")
    torch.manual_seed(0)
    model = build("mscfnet2", 10, image_size=32)
    spec = PreprocessSpec.for_dataset("cifar10", 32)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return save_checkpoint(path, model, class_names=classes, preprocess=spec, training={"note": "random init"})


def build_collection(directory: Path, checkpoint: Path, data: Path, limit: int) -> None:
    print(f"building {directory} ({limit} CIFAR-10 train images) with msir-index build ...", flush=True)
    command = [sys.executable, "-m", "indexer.cli", "build", str(directory), "--checkpoint", str(checkpoint)]
    command += ["--data", str(data), "--split", "train", "--limit", str(limit), "--device", "cpu"]
    subprocess.run(command, check=True, cwd=REPO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(collection: Path, overrides: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
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
    with log.open("wb") as fh:
        process = subprocess.Popen([sys.executable, "-m", "app.cli"], env=env, cwd=REPO, stdout=fh, stderr=fh)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"msir-serve exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"msir-serve not ready:\n{log.read_text()}")
    except BaseException:  # never leave a half-started server behind (Ctrl-C included)
        process.kill()
        raise


def summarise(latencies_s: list[float], wall_s: float, timings: list[dict[str, float]]) -> dict[str, Any]:
    ms = np.asarray(latencies_s) * 1000.0
    out: dict[str, Any] = {
        "requests": len(ms),
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


async def http_block(url: str, queries: list[bytes], concurrency: int, n: int, k: int, offset: int) -> Block:
    """``n`` searches by ``concurrency`` clients (each keeps one request in flight); latencies and wall time."""
    block = Block()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one(i: int, record: bool) -> None:
            data = queries[(offset + i) % len(queries)]
            started = time.perf_counter()
            r = await client.post("/v1/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"k": str(k)})
            elapsed = time.perf_counter() - started
            if r.status_code != 200:
                raise RuntimeError(f"search failed: {r.status_code} {r.text[:200]}")
            if record:
                block.latencies.append(elapsed)
                block.timings.append(r.json()["timings"])

        async def worker(w: int, count: int, record: bool) -> None:
            for i in range(count):
                await one(w * count + i, record)

        per = max(1, n // concurrency)
        await asyncio.gather(*(worker(w, 2, False) for w in range(concurrency)))  # warm connections and caches
        started = time.perf_counter()
        await asyncio.gather(*(worker(w, per, True) for w in range(concurrency)))
        block.wall_s = time.perf_counter() - started
    return block


@dataclass
class Block:
    latencies: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0

    def merge(self, other: Block) -> None:
        self.latencies += other.latencies
        self.timings += other.timings
        self.wall_s += other.wall_s


def python_floor(collection: Path, queries: list[bytes], n: int, k: int) -> dict[str, Any]:
    """Decode + preprocess + embed + search through indexer.Collection, one query at a time, no HTTP."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    # The service's thread settings, so that the floor differs from the service by HTTP only.
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.faiss_threads:
        faiss.omp_set_num_threads(settings.faiss_threads)
    max_pixels = settings.max_pixels
    with Collection.open(collection, device="cpu") as col:
        spec = col.embedder.spec
        latencies, timings = [], []
        for i in range(n + 10):
            data = queries[i % len(queries)]
            t0 = time.perf_counter()
            img = open_image(data, max_pixels=max_pixels)
            t1 = time.perf_counter()
            x = to_uint8(img, spec)[None]
            t2 = time.perf_counter()
            emb = col.embedder.embed_uint8(x).embeddings
            t3 = time.perf_counter()
            col.search(emb, k)
            t4 = time.perf_counter()
            if i >= 10:  # warm-up
                latencies.append(t4 - t0)
                ms = [1000 * (b - a) for a, b in ((t0, t1), (t1, t2), (t2, t3), (t3, t4))]
                timings.append(dict(zip(("decode", "preprocess", "embed", "search"), ms, strict=True)))
        wall = sum(latencies)
    result = summarise(latencies, wall, [{**t, "database": 0.0, "total": sum(t.values())} for t in timings])
    result["note"] = "search includes reading the neighbours' rows (Collection.search does both)"
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Service latency: POST /v1/search",
        "",
        f"Device: {report['device']} ({report['cpu_count']} cores, CPU only, torch {report['torch']}). "
        f"Collection: {report['collection_size']:,} CIFAR-10 train images, "
        f"{report['index_type']} index, model {report['model']} ({report['weights']}). k = {report['k']}; queries: "
        f"CIFAR-10 test JPEGs; about {report['requests_per_level']} timed requests per level and configuration, "
        f"in {report['rounds']} blocks that alternate between the configurations (all servers up at once). "
        f"Load average of the machine before / after: {report['load_before']} / {report['load_after']} "
        f"(other work shares this CPU). Git {report['git_sha']}, {report['date']}.",
        "",
        "| path | configuration | clients | p50 ms | p95 ms | p99 ms | req/s | decode | model | FAISS | database "
        "| HTTP + other |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(path: str, batching: str, clients: str, r: dict[str, Any]) -> str:
        s = r.get("share_of_latency", {})
        pct = [f"{100 * s.get(k, 0):.0f}%" for k in ("decode", "model", "faiss", "database", "http_and_other")]
        return (
            f"| {path} | {batching} | {clients} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['requests_per_s']} | " + " | ".join(pct) + " |"
        )

    lines.append(row("Python API (floor)", "service threads", "1", report["python_floor"]))
    for run in report["http"]:
        for level in run["levels"]:
            lines.append(row("HTTP /v1/search", run["label"], str(level["concurrency"]), level))
    lines += [
        "",
        "Shares are of the mean client-side latency; *model* includes the micro-batch wait, *FAISS* the index "
        "search, *database* the SQL reading the neighbours' rows (timed with SQLAlchemy cursor events), *HTTP + "
        "other* the rest (HTTP, multipart parsing, thread hand-offs, queueing behind other requests). The client "
        "runs on the same machine as the server. *off* / *on (max N)*: micro-batching (MSIR_BATCH_MAX_SIZE=1 / N); "
        "*library threads*: MSIR_TORCH_THREADS=0 and MSIR_FAISS_THREADS=0 (one thread per core) instead of the "
        "service's default of 1.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, help="collection directory (default: find or build one)")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for a new collection (default: random init)")
    parser.add_argument("--size", type=int, default=50_000, help="images in the collection to build (50000)")
    parser.add_argument("--requests", type=int, default=240, help="timed requests per level and configuration")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-max-size", type=int, default=Settings.model_fields["batch_max_size"].default)
    parser.add_argument("--no-compare-batching", action="store_true", help="only the batching setting given")
    parser.add_argument(
        "--compare-threads",
        action="store_true",
        help="also run every configuration with torch's and FAISS's default threads (one per core) instead of 1",
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per level and configuration")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()

    load_before = [round(v, 2) for v in os.getloadavg()]
    data = extract(TAR, CACHE / "datasets")
    collection = args.collection or find_collection(args.size)
    if collection is None:
        collection = CACHE / "collections" / f"serve-latency-cifar10-{args.size}"
        build_collection(collection, args.checkpoint or bench_checkpoint(), data, args.size)
    print(f"collection: {collection}", flush=True)
    test_files = sorted((data / "test").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    queries = [test_files[i].read_bytes() for i in rng.choice(len(test_files), 500, replace=False)]

    with Collection.open(collection, device="cpu") as col:
        meta = col.embedder.meta
        info = {"collection_size": col.ntotal, "index_type": col.index_type, "model": meta.model_name}
        weights = "random init" if (meta.training or {}).get("note") == "random init" else "trained checkpoint"
    print("python floor ...", flush=True)
    floor = python_floor(collection, queries, args.requests, args.k)
    print(json.dumps(floor), flush=True)

    configs = [(f"on (max {args.batch_max_size})", {"MSIR_BATCH_MAX_SIZE": str(args.batch_max_size)})]
    if not args.no_compare_batching:
        configs.insert(0, ("off", {"MSIR_BATCH_MAX_SIZE": "1"}))
    if args.compare_threads:
        library = {"MSIR_TORCH_THREADS": "0", "MSIR_FAISS_THREADS": "0"}
        configs += [(f"{label}, library threads", {**env, **library}) for label, env in configs]
    log_dir = args.out / "serve_latency_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    servers = []
    try:
        for i, (_, env) in enumerate(configs):
            servers.append(start_server(collection, env, log_dir / f"server-{i}.log"))
        results: dict[tuple[int, int], Block] = {}
        for c in args.concurrency:
            # Configurations take turns in short blocks, so a neighbour's load on a shared machine falls on all
            # of them alike instead of on whichever happened to run at the time.
            per_block = max(c, args.requests // args.rounds)
            for r in range(args.rounds):
                for i in range(len(configs)):
                    block = asyncio.run(http_block(servers[i][1], queries, c, per_block, args.k, r * per_block))
                    results.setdefault((i, c), Block()).merge(block)
                print(f"{c} clients: round {r + 1}/{args.rounds} done", flush=True)
    finally:
        for process, _ in servers:
            process.terminate()
        for process, _ in servers:
            process.wait(60)
    shutil.rmtree(log_dir, ignore_errors=True)
    http_runs = []
    for i, (label, env) in enumerate(configs):
        levels = []
        for c in args.concurrency:
            block = results[(i, c)]
            level = {"concurrency": c, **summarise(block.latencies, block.wall_s, block.timings)}
            print(label, json.dumps(level), flush=True)
            levels.append(level)
        http_runs.append({"label": label, "env": env, "levels": levels})

    device = cpu_name()
    report = {
        "benchmark": "serve_latency",
        "device": device,
        "device_type": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "git_sha": git_sha(),
        "date": time.strftime("%Y-%m-%d"),
        "k": args.k,
        "requests_per_level": args.requests,
        "rounds": args.rounds,
        "load_before": load_before,
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "weights": weights,
        "collection": str(collection),
        **info,
        "python_floor": floor,
        "http": http_runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "serve_latency_cpu"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"saved {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
