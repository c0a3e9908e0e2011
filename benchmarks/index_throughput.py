"""Indexer benchmark: CIFAR-10 build throughput vs the model alone, resume after SIGKILL, search latency/recall.

1. ``msir-index build`` of the 60,000 CIFAR-10 images (train + test) with an MSCFNet-4 checkpoint (randomly
   initialised unless ``--checkpoint``), in a subprocess: images/s of the whole build and peak RSS.
2. The model-only forward pass over the same preprocessed tensors (decoded once with
   ``msir_data.cache.cached_split``, normalised beforehand) on the same device and threads: images/s, and
   the ratio build / model (target >= 0.8).
3. A second build killed with SIGKILL at ~30 %, re-run with ``--resume``, then ``msir-index verify``.
4. Search latency per query (one query at a time) and recall@10 against flat for flat / ivfpq / hnsw, on the
   60k stored embeddings and on 1M clustered synthetic vectors (Gaussian mixture on the unit sphere).

Writes ``results/benchmarks/index_throughput-<device>.json`` and ``.md``. The dataset is extracted from
``../shared/datasets/cifar10-jpg.tar`` to ``~/.cache/msir/datasets/`` when absent (never into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from indexer.metadata.queries import MetadataStore  # noqa: E402
from indexer.vectors.faiss_index import VectorIndex  # noqa: E402
from models import PreprocessSpec, normalize  # noqa: E402
from msir_data import open_dataset  # noqa: E402
from msir_data.cache import cached_split  # noqa: E402

CACHE = Path.home() / ".cache" / "msir"
# Search-time settings measured again on the same built index (speed/recall trade-off).
VARIANTS = {"ivfpq": [{"nprobe": 256}], "hnsw": [{"ef_search": 512}]}
TAR = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def device_name(device: str) -> str:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0).replace(" ", "-")
    cpu = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu.replace(' ', '-')}-{os.cpu_count()}cores"


def ensure_dataset() -> Path:
    root = CACHE / "datasets" / "cifar10"
    if not (root / "train").is_dir():
        log(f"extracting {TAR} to {root.parent}")
        root.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(TAR) as tar:
            tar.extractall(root.parent, filter="data")
    return root


def ensure_checkpoint(given: Path | None, workdir: Path) -> Path:
    if given is not None:
        return given
    path = workdir / "mscfnet4-random"
    if not path.with_suffix(".json").is_file():
        torch.manual_seed(0)
        model = models.build("mscfnet4", num_classes=10, image_size=32)
        spec = PreprocessSpec.for_dataset("cifar10", 32)
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        models.save_checkpoint(path, model, class_names=names, preprocess=spec)
    return path.with_suffix(".safetensors")


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "indexer.cli", *(str(a) for a in args)]


def rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:
        return 0


def watch_rss(pid: int, peak: dict[str, int], stop: threading.Event) -> None:
    """Peak RSS (VmHWM) of the build process and the largest sum over it and its decode workers."""
    while not stop.is_set():
        total = 0
        for p in [pid, *children(pid)]:
            try:
                status = Path(f"/proc/{p}/status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            rss = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
            total += rss
            if p == pid:
                peak["main"] = max(peak.get("main", 0), int(fields.get("VmHWM", "0 kB").split()[0]) * 1024)
        peak["total"] = max(peak.get("total", 0), total)
        stop.wait(0.5)


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def run_build(command: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float, dict[str, int]]:
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak: dict[str, int] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_rss, args=(proc.pid, peak, stop), daemon=True)
    watcher.start()
    out, err = proc.communicate()
    stop.set()
    watcher.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}): {err.decode()[-3000:]}")
    return json.loads(out), wall, peak


def build_command(args: argparse.Namespace, directory: Path, ck: Path, data: Path) -> list[str]:
    """The ``msir-index build`` command line both the build and the kill/resume benchmarks run."""
    limit = ["--limit", args.limit] if args.limit else []
    options = ["--batch-size", args.batch_size, "--workers", args.workers, "--device", args.device, "--json"]
    return cli("build", directory, "-c", ck, "--data", data, *options, *limit)


def build_benchmark(args: argparse.Namespace, ck: Path, data: Path, env: dict[str, str]) -> dict[str, Any]:
    directory = args.workdir / "cifar10-flat"
    shutil.rmtree(directory, ignore_errors=True)
    command = build_command(args, directory, ck, data)
    log("msir-index build (60k CIFAR-10) ...")
    report, wall, peak = run_build(command, env)
    verify = subprocess.run(cli("verify", directory, "--json"), cwd=REPO, env=env, capture_output=True)
    log(f"build: {report['added']} images in {wall:.1f} s ({report['images_per_s']:.0f} img/s in the pipeline)")
    return {
        "directory": str(directory),
        "command": " ".join(str(c) for c in command[1:]),
        "report": report,
        "process_wall_s": wall,
        "process_images_per_s": report["added"] / wall,
        "peak_rss_main_bytes": peak.get("main", 0),
        "peak_rss_with_workers_bytes": peak.get("total", 0),
        "verify_exit_code": verify.returncode,
        "verify": json.loads(verify.stdout) if verify.stdout else None,
    }


def forward_benchmark(args: argparse.Namespace, ck: Path, data: Path) -> dict[str, Any]:
    """Model-only images/s over preprocessed tensors (same batches, device and threads as the build)."""
    loaded = models.load_checkpoint(ck, device="cuda" if args.device == "cuda" else "cpu")
    spec = loaded.meta.preprocess
    split = cached_split(open_dataset("auto", data), "train", spec, args.workdir / "decode-cache", progress=False)
    device = next(loaded.model.parameters()).device
    n = min(len(split), args.forward_images)
    batches = [
        normalize(torch.from_numpy(np.array(split.images[i : i + args.batch_size])), spec).to(device)
        for i in range(0, n, args.batch_size)
    ]
    model = loaded.model
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    with torch.inference_mode(), autocast:
        model(batches[0])  # warm-up
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        for batch in batches:
            model(batch)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    log(f"model-only forward: {n / seconds:.0f} img/s over {n} preprocessed images")
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds, "torch_threads": torch.get_num_threads()}


def kill_resume(args: argparse.Namespace, ck: Path, data: Path, env: dict[str, str], total: int) -> dict[str, Any]:
    directory = args.workdir / "cifar10-resume"
    shutil.rmtree(directory, ignore_errors=True)
    command = build_command(args, directory, ck, data)
    log("kill/resume: build, SIGKILL at ~30 % ...")
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = int(total * 0.3)
    while rows(directory / "metadata.db") < target:
        if proc.poll() is not None:
            raise SystemExit("the build finished before it could be killed")
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_rows = rows(directory / "metadata.db")
    log(f"killed with {killed_rows} rows stored; re-running with --resume")
    report, wall, _ = run_build([*command, "--resume"], env)
    verify = subprocess.run(cli("verify", directory, "--json"), cwd=REPO, env=env, capture_output=True)
    with sqlite3.connect(directory / "metadata.db") as conn:
        count, distinct = conn.execute("SELECT count(*), count(DISTINCT sha256) FROM images").fetchone()
    log(f"resumed: verify exit {verify.returncode}, rows {count}, distinct sha256 {distinct}")
    result = {
        "killed_at_rows": killed_rows,
        "resume_report": report,
        "resume_wall_s": wall,
        "verify_exit_code": verify.returncode,
        "verify": json.loads(verify.stdout) if verify.stdout else None,
        "rows": count,
        "distinct_sha256": distinct,
    }
    shutil.rmtree(directory, ignore_errors=True)
    return result


def clustered(n: int, dim: int, centres: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # bounded temporaries
        m = min(100_000, n - start)
        x = c[rng.integers(0, centres, m)] + noise * rng.standard_normal((m, dim)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def measure(index: VectorIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Latency: one query at a time on one FAISS thread (how a service answers a request); QPS: one batch on every
    thread. Returns the ids found, the latencies (ms) and the batch QPS."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    latencies = []
    found = np.zeros((len(queries), 10), np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        found[i] = index.search(q[None], 10)[1][0]
        latencies.append(time.perf_counter() - t0)
    faiss.omp_set_num_threads(threads)
    t0 = time.perf_counter()
    index.search(queries, 10)
    return found, np.asarray(latencies) * 1000, len(queries) / (time.perf_counter() - t0)


def search_benchmark(
    vectors: np.ndarray,
    queries: np.ndarray,
    configs: dict[str, tuple[str, dict[str, Any]]],
    variants: dict[str, list[dict[str, int]]] | None = None,
) -> dict[str, Any]:
    """Build each index and measure it, then again with each search-time option set of ``variants[type]``."""
    ids = np.arange(1, len(vectors) + 1)
    results: dict[str, Any] = {}
    truth = None
    for name, (kind, options) in configs.items():
        started = time.perf_counter()
        index = VectorIndex(kind, vectors.shape[1], options)
        for start in range(0, len(vectors), 100_000):  # as a rebuild does: train once, on everything
            index.add(ids[start : start + 100_000], vectors[start : start + 100_000], train=False)
        index.maybe_train()
        build_s = time.perf_counter() - started
        runs: list[tuple[str, dict[str, int]]] = [(name, {})] + [
            (f"{name} {v}", v) for v in (variants or {}).get(kind, [])
        ]
        for label, override in runs:
            index.options.update(override)
            if kind == "ivfpq" and index.trained:
                index.main.nprobe = index.effective_nprobe(int(index.main.nlist))
            found, lat, qps = measure(index, queries)
            if truth is None:
                truth = found.copy()
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
            results[label] = {
                "type": kind,
                "options": dict(index.options),
                "describe": index.describe(),
                "build_s": build_s,
                "latency_ms_median": float(np.median(lat)),
                "latency_ms_p95": float(np.percentile(lat, 95)),
                "latency_ms_mean": float(lat.mean()),
                "batch_qps": qps,
                "recall_at_10_vs_flat": recall,
            }
            log(f"  {label}: build {build_s:.1f} s, {np.median(lat):.2f} ms/query, recall@10 {recall:.4f}")
        del index
    return results


def stored_vectors(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every stored embedding (id order) and the row positions of the test-split images."""
    store = MetadataStore(f"sqlite:///{directory / 'metadata.db'}")
    parts = list(store.iter_embeddings())
    test_ids = store.labelled_embeddings("test")[0]
    store.close()
    ids = np.concatenate([p[0] for p in parts])
    return np.concatenate([p[1] for p in parts]), np.searchsorted(ids, test_ids)


def markdown(result: dict[str, Any]) -> str:
    b, f = result.get("build"), result.get("forward")
    embed_s = b["report"]["timings"]["embed_s"] if b else 1.0
    stage_rate = b["report"]["added"] / embed_s if b else 0.0
    lines = [
        f"# Indexer throughput — {result['device']}",
        "",
        f"- date: {result['date']}"
        + (
            f" (build, model-only and kill/resume figures: run of {result['build_measured_at']})"
            if result.get("build_measured_at")
            else ""
        ),
        f"- torch {result['torch']}, {result['torch_threads']} threads; load average at start/end "
        f"{result['load_start']} / {result['load_end']} (shared machine)",
        "",
    ]
    if b and f:
        stages = b["report"]["stages"]
        lines += [
            "## Build (`msir-index build`, CIFAR-10 train + test)",
            "",
            "| images | wall (process) | build img/s | model-only img/s | ratio | peak RSS main | peak RSS + workers |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            f"| {b['report']['added']:,} | {b['process_wall_s']:.1f} s | {b['process_images_per_s']:.0f} "
            f"| {f['images_per_s']:.0f} | {result['ratio']:.2f} | {b['peak_rss_main_bytes'] / 2**20:.0f} MiB "
            f"| {b['peak_rss_with_workers_bytes'] / 2**20:.0f} MiB |",
            "",
            f"Pipeline rate (listing to last save, without interpreter start-up): {b['report']['images_per_s']:.0f} "
            f"img/s. Model-only: {f['images']:,} preprocessed train images, same batch size, device and threads, "
            f"measured after the build. Same run, no clock drift: the embedder stage alone ran at "
            f"{stage_rate:.0f} img/s, the whole pipeline at {b['report']['images_per_s']:.0f} img/s "
            f"(ratio {b['report']['images_per_s'] / stage_rate:.2f}).",
            "",
            "| stage | seconds | share |",
            "| --- | ---: | ---: |",
            *[f"| {s['stage']} | {s['seconds']:.1f} | {s['share']:.0%} |" for s in stages],
            "",
            f"`msir-index verify` exit code: {b['verify_exit_code']}",
            "",
        ]
    if "kill_resume" in result:
        k = result["kill_resume"]
        lines += [
            "## Kill -9 at ~30 % and resume",
            "",
            f"Killed with {k['killed_at_rows']:,} rows stored; the re-run skipped "
            f"{k['resume_report']['already_present']:,} and added {k['resume_report']['added']:,} "
            f"({k['resume_wall_s']:.0f} s). Rows {k['rows']:,}, distinct sha256 {k['distinct_sha256']:,}, "
            f"`verify` exit code {k['verify_exit_code']}.",
            "",
        ]
    for key, title in (("search_60k", "CIFAR-10 stored embeddings"), ("search_synthetic", "synthetic clustered")):
        if key not in result:
            continue
        s = result[key]
        lines += [
            f"## Search: {title} ({s['n']:,} x {s['dim']}, {s['queries']} queries, k=10)",
            "",
            s["note"],
            "",
            "| index | effective options | build s | median ms/query (1 thread) | p95 ms | batch QPS | "
            "recall@10 vs flat |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in s["indexes"].items():
            shown = {k: v for k, v in r["options"].items() if v is not None}
            shown.update({k: r["describe"][k] for k in ("nlist", "m", "nprobe") if k in r["describe"]})
            lines.append(
                f"| {name} | {shown} | {r['build_s']:.1f} | {r['latency_ms_median']:.2f} | "
                f"{r['latency_ms_p95']:.2f} | {r['batch_qps']:.0f} | {r['recall_at_10_vs_flat']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--workdir", type=Path, default=CACHE / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    parser.add_argument("--forward-images", type=int, default=10_000)
    parser.add_argument("--synthetic-n", type=int, default=1_000_000)
    parser.add_argument("--synthetic-dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--limit", type=int, default=None, help="index only N images (smoke runs)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the collection of a previous run")
    parser.add_argument("--skip-kill-resume", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the .md of a saved .json")
    args = parser.parse_args()
    if args.render is not None:
        args.render.with_suffix(".md").write_text(markdown(json.loads(args.render.read_text())) + "\n")
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result: dict[str, Any] = {
        "device": device_name(args.device),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    data = ensure_dataset()
    ck = ensure_checkpoint(args.checkpoint, args.workdir)
    result["checkpoint"] = str(ck)
    stem = args.out / f"index_throughput-{result['device']}"
    previous = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    if not args.skip_build:
        result["build"] = build_benchmark(args, ck, data, env)
        result["forward"] = forward_benchmark(args, ck, data)
        result["ratio"] = result["build"]["process_images_per_s"] / result["forward"]["images_per_s"]
    else:  # a search-only run keeps the build figures of the previous run, saying so
        for key in ("build", "forward", "ratio", "kill_resume"):
            if key in previous:
                result[key] = previous[key]
        result["build_measured_at"] = previous.get("build_measured_at", previous.get("date"))
    if not args.skip_kill_resume:
        result["kill_resume"] = kill_resume(args, ck, data, env, args.limit or 60_000)

    log("search on the 60k stored embeddings ...")
    vectors, test_rows = stored_vectors(args.workdir / "cifar10-flat")
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(test_rows, min(args.queries, len(test_rows)), replace=False)]
    configs: dict[str, tuple[str, dict[str, Any]]] = {
        "flat": ("flat", {}),
        "ivfpq": ("ivfpq", {}),
        "hnsw": ("hnsw", {}),
    }
    result["search_60k"] = {
        "n": len(vectors),
        "dim": vectors.shape[1],
        "queries": len(queries),
        "note": "Queries: stored embeddings of test images (each also in the database). Default index options.",
        "indexes": search_benchmark(vectors, queries, configs, VARIANTS),
    }
    if not args.skip_synthetic:
        n, dim = args.synthetic_n, args.synthetic_dim
        log(f"search on {n:,} synthetic clustered vectors (dim {dim}) ...")
        data_vectors = clustered(n + args.queries, dim, centres=1000, noise=0.2)
        configs = {
            "flat": ("flat", {}),
            "ivfpq": ("ivfpq", {}),
            "hnsw": ("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 128}),
        }
        result["search_synthetic"] = {
            "n": n,
            "dim": dim,
            "queries": args.queries,
            "note": f"Gaussian mixture: 1,000 centres on the unit sphere, noise 0.2 per dimension (clusters overlap); "
            f"dim {dim} and HNSW M=16 / efConstruction=40 (instead of the defaults) keep the 1M build within the "
            f"benchmark's time on this machine. Queries are held out from the same distribution.",
            "indexes": search_benchmark(data_vectors[:n], data_vectors[n:], configs, VARIANTS),
        }
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["self_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    args.out.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(result) + "\n")
    print(markdown(result))
    log(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
