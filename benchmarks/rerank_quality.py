"""Re-ranking on the CIFAR-10 protocol: mAP gain and added time per query of αQE, DBA and k-reciprocal.

Queries = the 10,000 test images, database = the 50,000 training images, embeddings of a checkpoint (default: the
shipped demo model), ranked by ``training.evaluation.retrieval_metrics`` with each ``--rerank`` method — the code
``msir-eval --rerank`` runs and the indexer's search reuses. Saves ``results/benchmarks/rerank_cifar10.{json,md}``
naming the device; ``benchmarks/reproduce.py --report-only`` puts the table into results/RESULTS.md.

    .venv/bin/python -m benchmarks.rerank_quality [--checkpoint demo/checkpoint/mscfnet4_cifar10.safetensors]
        [--data ~/.cache/msir/datasets/cifar10] [--limit-queries 10000] [--emb-cache /tmp/emb.npz]

The extracted CIFAR-10 copy comes from ``../shared/datasets/cifar10-jpg.tar`` (see its README). Times are wall
and process CPU seconds of the whole ranking (plain: one 10k x 50k matmul + sort); "added CPU ms/query" = (method -
plain) CPU / queries (CPU time, because other jobs on a shared machine inflate wall time); DBA's includes its one-off
augmentation of the whole database (the service instead augments each query's shortlist from the index).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.eval_speed import cpu_cores, cpu_model
from models import load_checkpoint
from msir_core.retrieval.rerank import RerankConfig
from msir_data import open_dataset
from msir_data.cache import cached_split
from training.evaluation import retrieval_metrics
from training.evaluation.embed import embed_arrays

logger = logging.getLogger("benchmarks.rerank_quality")
METHODS = ("none", "aqe", "dba", "kreciprocal")


def embeddings(args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.emb_cache is not None and args.emb_cache.exists():
        with np.load(args.emb_cache) as z:
            return {k: z[k] for k in z.files}
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    reader = open_dataset("auto", args.data.expanduser())
    out: dict[str, np.ndarray] = {}
    for split, name in (("test", "q"), ("train", "d")):
        cached = cached_split(reader, split, loaded.meta.preprocess, args.cache_dir.expanduser(), progress=False)
        emb, _ = embed_arrays(loaded.model, cached.images, loaded.meta.preprocess, 256, progress=False)
        out[f"{name}_emb"], out[f"{name}_labels"] = np.asarray(emb), np.asarray(cached.labels)
    if args.emb_cache is not None:
        args.emb_cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.emb_cache, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("demo/checkpoint/mscfnet4_cifar10.safetensors"))
    parser.add_argument("--data", type=Path, default=Path("~/.cache/msir/datasets/cifar10"))
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/msir/decoded"))
    parser.add_argument("--emb-cache", type=Path, default=None, help="reuse/save the embeddings here (.npz)")
    parser.add_argument("--limit-queries", type=int, default=None, help="first N test images only (quick runs)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    e = embeddings(args)
    embed_seconds = time.perf_counter() - started
    q, ql = e["q_emb"], e["q_labels"]
    if args.limit_queries:
        q, ql = q[: args.limit_queries], ql[: args.limit_queries]
    d, dl = e["d_emb"], e["d_labels"]
    load_before = os.getloadavg()[0]
    rows = []
    for method in args.methods.split(","):
        cfg = RerankConfig(method=method)  # type: ignore[arg-type]
        t0, c0 = time.perf_counter(), time.process_time()
        m = retrieval_metrics(q, ql, d, dl, ks=(1, 10, 100), rerank=cfg)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = {
            "method": method,
            "settings": cfg.describe(),
            "map_at_all": m["map_at_all"],
            "map_at_r": m["map_at_r"],
            "precision_at_10": m["precision_at_k"]["10"],
            "precision_at_100": m["precision_at_k"]["100"],
            "seconds": round(seconds, 2),
            "process_cpu_seconds": round(cpu, 2),
            "database_seconds": m.get("rerank", {}).get("database_seconds", 0.0),
        }
        rows.append(row)
        logger.info("%s", row)
    base = rows[0] if rows and rows[0]["method"] == "none" else None
    for row in rows:
        if base is not None:
            row["map_gain"] = round(row["map_at_all"] - base["map_at_all"], 4)
            per_query = row["seconds"] - row["database_seconds"] - base["seconds"]
            row["added_ms_per_query"] = round(1000 * per_query / len(q), 3)
    meta = load_checkpoint(args.checkpoint, device="cpu").meta if args.checkpoint.exists() else None
    result = {
        "benchmark": "rerank_quality",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "weights_sha256": meta.weights_sha256 if meta else None,
        "queries": len(q),
        "database": len(d),
        "device": {
            "cpu": cpu_model(),
            "cpu_cores": cpu_cores(),
            "torch_threads": torch.get_num_threads(),
            "note": "a 2-core VM shared with other jobs: wall times include waiting for the CPU",
            "load_average_1min_before": round(load_before, 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        },
        "embedding_seconds": round(embed_seconds, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "rerank_cifar10"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text("\n".join(markdown(result)) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


def markdown(result: dict) -> list[str]:
    """The table (also used by RESULTS.md). Added time per query is given in process CPU time, which the other jobs
    on a shared machine do not inflate, and in wall time."""
    dev = result["device"]
    rows = result["rows"]
    base = next((r for r in rows if r["method"] == "none"), None)
    lines = [
        f"Checkpoint `{result['checkpoint']}` (weights sha256 {str(result['weights_sha256'])[:12]}…), "
        f"{result['queries']:,} CIFAR-10 test queries x {result['database']:,} training images, "
        f"{result['date']} on {dev['cpu']}, {dev['cpu_cores']} cores shared with other jobs, "
        f"{dev['torch_threads']} torch thread(s); 1-min load average {dev['load_average_1min_before']} before and "
        f"{dev['load_average_1min_after']} after (wall times include waiting for the CPU).",
        "",
        "| re-ranking | settings | mAP@all | gain | mAP@R | P@10 | P@100 | ranking CPU s | added CPU ms/query "
        "| ranking wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "method") or "–"
        if r.get("database_seconds"):
            settings += f"; includes augmenting the whole database once ({r['database_seconds']:.1f} s wall)"
        gain = r["map_at_all"] - base["map_at_all"] if base else 0.0
        added = 1000 * (r["process_cpu_seconds"] - base["process_cpu_seconds"]) / result["queries"] if base else 0.0
        lines.append(
            f"| {r['method']} | {settings} | {r['map_at_all']:.4f} | {gain:+.4f} | {r['map_at_r']:.4f} | "
            f"{r['precision_at_10']:.4f} | {r['precision_at_100']:.4f} | {r['process_cpu_seconds']:.1f} | "
            f"{added:+.2f} | {r['seconds']:.1f} |"
        )
    return lines


if __name__ == "__main__":
    main()
