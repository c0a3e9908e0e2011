"""Speed and peak memory of ``retrieval_metrics`` on random clustered embeddings.

Default size: 10,000 queries x 50,000 database items x 128-d, 10 classes (CIFAR-10-like: ~5,000 relevant items
per query). Prints the numbers and saves JSON + Markdown under ``results/benchmarks/`` naming the device.

    .venv/bin/python -m benchmarks.eval_speed [--queries 10000 --database 50000 --dim 128 --device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from training.evaluation import retrieval_metrics


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(centres), n)
    emb = centres[labels] + spread * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return emb.astype(np.float32), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--database", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--spread", type=float, default=2.0, help="noise around the class centres")
    parser.add_argument("--batch-size", type=int, default=256)  # retrieval_metrics' default
    parser.add_argument("--ks", default="1,2,5,10")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32) / np.sqrt(args.dim) * 4
    q, ql = clustered(rng, args.queries, centres, args.spread / np.sqrt(args.dim) * 4)
    db, dbl = clustered(rng, args.database, centres, args.spread / np.sqrt(args.dim) * 4)
    ks = [int(k) for k in args.ks.split(",")]
    rss_before = peak_rss_mib()
    load_before = os.getloadavg()[0]

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    metrics = retrieval_metrics(q, ql, db, dbl, ks=ks, batch_size=args.batch_size, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    load_after = os.getloadavg()[0]
    rss_after = peak_rss_mib()

    device = {
        "cpu": cpu_model(),
        "cpu_cores": cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # The machine may be shared: the load average and CPU time tell how much of it this run really had.
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(load_after, 2),
    }
    if args.device.startswith("cuda"):
        device["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        device["gpu_peak_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result = {
        "benchmark": "retrieval_metrics",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device_arg": args.device,
        "device": device,
        "config": {
            "queries": args.queries,
            "database": args.database,
            "dim": args.dim,
            "classes": args.classes,
            "batch_size": args.batch_size,
            "ks": ks,
        },
        "seconds": round(elapsed, 2),
        "process_cpu_seconds": round(cpu_seconds, 2),
        "queries_per_second": round(args.queries / elapsed, 1),
        "peak_rss_mib": round(rss_after, 1),
        "peak_rss_before_call_mib": round(rss_before, 1),
        "peak_rss_increase_mib": round(rss_after - rss_before, 1),
        "sanity": {
            "map_at_all": metrics["map_at_all"],
            "map_at_r": metrics["map_at_r"],
            "precision_at_k": metrics["precision_at_k"],
            "knn_accuracy": metrics["knn_accuracy"],
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"eval_speed_{args.device.replace(':', '')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    hardware = device.get("gpu", f"{device['cpu']}, {device['cpu_cores']} cores")
    md = [
        "# retrieval_metrics speed",
        "",
        f"{result['date']} on {hardware} (device `{args.device}`, torch {device['torch']}, "
        f"{device['torch_threads']} torch threads; 1-min load average {device['load_average_1min_before']} "
        f"before and {device['load_average_1min_after']} after the run).",
        "",
        "| queries | database | dim | classes | batch | wall s | process CPU s | queries/s | peak RSS (MiB) "
        "| RSS increase (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.queries} | {args.database} | {args.dim} | {args.classes} | {args.batch_size} | "
        f"{result['seconds']} | {result['process_cpu_seconds']} | {result['queries_per_second']} | "
        f"{result['peak_rss_mib']} | {result['peak_rss_increase_mib']} |",
        "",
        f"mAP@all {metrics['map_at_all']:.4f}, mAP@R {metrics['map_at_r']:.4f} (random clustered data; "
        "a sanity check, not a model result).",
    ]
    if "gpu_peak_memory_mib" in device:
        md.insert(-2, f"GPU peak memory: {device['gpu_peak_memory_mib']} MiB.")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.md')}")


if __name__ == "__main__":
    main()
