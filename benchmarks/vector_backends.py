"""Index backends side by side: FAISS flat / IVF-PQ / HNSW and Milvus (milvus-lite) on the same vectors.

The stores are the ones a collection uses (``indexer.vectors.backends``: :class:`FaissStore` and :class:`MilvusStore`,
default options), filled with the same N clustered vectors (Gaussian mixture on the unit sphere, as in
``index_throughput.py``), each row carrying one of ``--labels`` labels and a train/test split. Queries are held
out from the same distribution and run one at a time (how the service answers a request), unfiltered and with a
label filter (``--labels`` = 10: a tenth of the rows pass) going through the collection's own filtered search
(``indexer.search.filtered_search``: FAISS over-fetches and filters rows, Milvus gets the filter pushed down).
Recall@10 is against the exact answer (numpy, filtered the same way). FAISS and milvus-lite run in this process
with one thread; milvus-lite answers over its local gRPC hop.

Writes ``results/benchmarks/vector_backends-<device>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import clustered, device_name  # noqa: E402
from indexer.manifest import IndexSpec  # noqa: E402
from indexer.records import ImageRecord  # noqa: E402
from indexer.search import Filters, filtered_search  # noqa: E402
from indexer.vectors.backends import VectorStore, new_store  # noqa: E402
from indexer.vectors.milvus_store import MilvusStore  # noqa: E402

CONFIGS = {  # name -> (backend, index type)
    "FAISS flat": ("faiss", "flat"),
    "FAISS IVF-PQ": ("faiss", "ivfpq"),
    "FAISS HNSW": ("faiss", "hnsw"),
    "Milvus-lite FLAT": ("milvus", "flat"),
    # Not in the default run: milvus-lite builds HNSW per segment in a background thread after the flush, which
    # takes as long as FAISS's build on this machine (--only to add it).
    "Milvus-lite HNSW": ("milvus", "hnsw"),
}
DEFAULT = ["FAISS flat", "FAISS IVF-PQ", "FAISS HNSW", "Milvus-lite FLAT"]
K = 10


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def make_records(n: int, labels: int, seed: int = 1) -> tuple[dict[int, ImageRecord], np.ndarray]:
    """Rows 1..n with one label each (uniform) and a train/test split; also the label index of every row."""
    rng = np.random.default_rng(seed)
    label_of = rng.integers(0, labels, n)
    added = datetime.now(UTC)
    records = {
        i + 1: ImageRecord(
            id=i + 1,
            path=None,
            uri=f"synthetic://{i + 1}",
            sha256=f"{i + 1:064x}",
            labels=[f"c{label_of[i]}"],
            split="train" if i % 2 else "test",
            width=1,
            height=1,
            source="benchmark",
            added_at=added,
            metadata={},
        )
        for i in range(n)
    }
    return records, label_of


def exact(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The true top-k ids (1-based) per query, among the rows of ``mask`` when given."""
    scores = queries @ vectors.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, 1) + 1


def run_queries(
    store: VectorStore,
    records: dict[int, ImageRecord],
    queries: np.ndarray,
    filters: Filters,
    budget_s: float = float("inf"),
    minimum: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Ids found and per-query milliseconds, through the collection's filtered search. Stops after ``budget_s``
    (at least ``minimum`` queries): the rows of ``found`` past the last query run stay -1."""

    def search(batch: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray, int]:
        total = store.ntotal
        scores, ids = store.search(batch, min(fetch, total), filters)
        return scores, ids, total

    def get_many(ids: Any) -> dict[int, ImageRecord]:
        return {int(i): records[int(i)] for i in ids if int(i) in records}

    found = np.full((len(queries), K), -1, np.int64)
    latencies: list[float] = []
    begin = time.perf_counter()
    for i, q in enumerate(queries):
        if i >= minimum and time.perf_counter() - begin > budget_s:
            break
        started = time.perf_counter()
        hits = filtered_search(search, get_many, q[None], K, filters, pushdown=store.filters_pushed_down)[0]
        latencies.append((time.perf_counter() - started) * 1000)
        found[i, : len(hits)] = [h.id for h in hits]
    return found, np.asarray(latencies)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth, strict=True)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--labels", type=int, default=10)
    # 0.1 per dimension at 128-d: overlapping clusters whose neighbours are still meaningful (pure noise, as 0.2 is
    # at 128-d, makes every approximate index look bad and is unlike learned embeddings).
    parser.add_argument("--noise", type=float, default=0.1)
    # Bounds each (index, filter) run on a busy shared machine: queries stop after this many seconds (>= 10 run).
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--only", nargs="*", default=DEFAULT, choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    load_start = os.getloadavg()
    data = clustered(args.n + args.queries, args.dim, centres=1000, noise=args.noise)
    vectors, queries = data[: args.n], data[args.n :]
    records, label_of = make_records(args.n, args.labels)
    ids = np.arange(1, args.n + 1, dtype=np.int64)
    wanted = "c0"
    filters = {"unfiltered": Filters(), f"label = {wanted}": Filters(labels=frozenset([wanted]))}
    truths = {
        "unfiltered": exact(vectors, queries, None),
        f"label = {wanted}": exact(vectors, queries, label_of == 0),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="msir-bench-") as tmp:
        for name in args.only:
            backend, kind = CONFIGS[name]
            spec = IndexSpec(type=kind, params={}, backend=backend)
            started = time.perf_counter()
            folder = Path(tmp) / name.replace(" ", "_")
            store = new_store(spec, args.dim, directory=folder, collection_id="bench",
                              records=lambda wanted_ids: {int(i): records[int(i)] for i in wanted_ids})  # fmt: skip
            try:
                for start in range(0, args.n, 10_000):  # as a rebuild does: train once at the end
                    store.add(ids[start : start + 10_000], vectors[start : start + 10_000], train=False)
                store.maybe_train()
                folder.mkdir(parents=True, exist_ok=True)
                store.save(folder)  # as a build ends (Milvus: flush, so searches run on sealed, indexed segments)
                if isinstance(store, MilvusStore):  # measured once Milvus's background index build is done
                    assert store.wait_indexed(1_800), f"{name}: Milvus index not built within 30 min"
                build_s = time.perf_counter() - started
                entry: dict[str, Any] = {"backend": backend, "type": kind, "build_s": build_s,
                                         "describe": store.describe()}  # fmt: skip
                for label, flt in filters.items():
                    run_queries(store, records, queries[:2], flt)  # warm-up (connections, caches)
                    found, lat = run_queries(store, records, queries, flt, args.budget_s)
                    entry[label] = {
                        "queries_run": len(lat),
                        "recall_at_10": recall(found[: len(lat)], truths[label][: len(lat)]),
                        "ms_per_query_median": float(np.median(lat)),
                        "ms_per_query_p95": float(np.percentile(lat, 95)),
                        "ms_per_query_mean": float(lat.mean()),
                        "short_results": int((found < 0).any(axis=1).sum()),
                    }
                    log(f"{name} [{label}]: recall@10 {entry[label]['recall_at_10']:.4f}, "
                        f"{np.median(lat):.2f} ms/query median (build {build_s:.1f} s)")  # fmt: skip
                results[name] = entry
            finally:
                if backend == "milvus":
                    store.discard()
                else:
                    store.close()
    result = {
        "benchmark": "vector_backends",
        "device": device_name("cpu"),
        "note": "2 shared CPU cores (other jobs running); FAISS and milvus-lite in-process, one thread",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "budget_s": args.budget_s,
        "k": K,
        "labels": args.labels,
        "noise": args.noise,
        "load_average_start_end": [list(load_start), list(os.getloadavg())],
        "versions": versions(),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"vector_backends-{result['device']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {stem}.json and .md")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("faiss-cpu", "pymilvus", "milvus-lite"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


def markdown(result: dict[str, Any]) -> str:
    labels = [key for key in next(iter(result["results"].values())) if key == "unfiltered" or key.startswith("label")]
    lines = [
        f"# Index backends side by side — {result['device']}",
        "",
        f"- date: {result['date']}; {result['note']}; load average at start/end "
        f"{[round(x, 2) for x in result['load_average_start_end'][0]]} / "
        f"{[round(x, 2) for x in result['load_average_start_end'][1]]}",
        f"- {result['n']:,} clustered vectors x {result['dim']} (1,000 centres, noise {result['noise']}), "
        f"{result['queries']} held-out queries one at a time, k={result['k']}; each row has one of "
        f"{result['labels']} labels (the filter keeps ~1/{result['labels']} of the rows)",
        f"- versions: {', '.join(f'{k} {v}' for k, v in result['versions'].items())}; default msir index options",
        "- recall@10 against the exact answer (filtered the same way); ms/query through the collection's filtered "
        "search (FAISS: over-fetch and filter rows; Milvus: scalar filter pushed down)",
        "",
        f"- each (index, filter) run stops after {result['budget_s']:.0f} s (at least 10 queries): the queries "
        "column says how many ran (milvus-lite evaluates filters in Python, so its filtered runs are the short ones)",
        "",
        "| backend | build s | "
        + " | ".join(f"{x}: queries | recall@10 | ms/query (median, p95)" for x in labels)
        + " |",
        "| --- | ---: | " + " | ".join("---: | ---: | ---:" for _ in labels) + " |",
    ]
    for name, entry in result["results"].items():
        cells = [
            f"{e['queries_run']} | {e['recall_at_10']:.4f} | "
            f"{e['ms_per_query_median']:.2f}, {e['ms_per_query_p95']:.2f}"
            for e in (entry[x] for x in labels)
        ]
        lines.append(f"| {name} | {entry['build_s']:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
