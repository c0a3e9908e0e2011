"""The whole system at scale: a collection of N rows loaded into PostgreSQL with COPY, rebuilt per index kind, searched
with and without label filters, served (start to /readyz, RSS), on one thread.

Embeddings (method): the demo model (``demo/checkpoint``, MSCFNet-4 on CIFAR-10) embeds the 1,000 CIFAR-10 images
shipped in ``demo/images``; each of the N rows is one of them, drawn at random, plus Gaussian noise (``--noise``
per dimension) and renormalised, so rows cluster the way real CIFAR embeddings do. Each row carries its image's
class label (10 classes: a class filter keeps ~10 % of rows) and one of 100 "part" labels drawn uniformly (a part
filter keeps ~1 %). ``--queries`` held-out queries are drawn the same way (new noise, not in the collection). Exact
ground truth: brute force (numpy) over all N rows, filtered the same way.

Per index kind (``--kinds``: flat, ivfpq, hnsw, auto with ``--memory-budget``): ``msir-index rebuild`` from the
database (wall time and peak RSS of that process: its VmHWM), then in this process ``Collection.search``
(FAISS one thread, the allowed-id cache, the row fetch from PostgreSQL) per query: recall@10 and p50 / p95 ms; then
``msir-serve`` start to ``/readyz`` and its RSS (anonymous + file-backed: a mapped index's pages are file-backed
and shared between processes), with the index read into memory and memory-mapped (``MSIR_INDEX_MMAP``).

Writes ``results/benchmarks/scale-<N>.json`` and ``.md`` naming the device and the load average. A database named
``msir_scale_<N>`` is created on the server of ``--admin-url`` and dropped at the end.
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

import numpy as np
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.server_process import free_port, start_server, stop_server  # noqa: E402
from benchmarks.index_throughput import device_name  # noqa: E402
from indexer import Collection  # noqa: E402
from indexer.ingest.sources import from_folder  # noqa: E402

CHECKPOINT = REPO / "demo" / "checkpoint" / "mscfnet4_cifar10.safetensors"
IMAGES = REPO / "demo" / "images"
PARTS = 100  # "part" labels: each keeps ~1 % of rows
K = 10
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def base_embeddings(work: Path) -> tuple[np.ndarray, list[str]]:
    """The demo model's embeddings of the shipped CIFAR-10 images and their class names."""
    with Collection.create(work / "base", CHECKPOINT, device="cpu") as col:
        col.add_source(from_folder(IMAGES), batch_size=64)
        _, vectors, labels = col.store.labelled_embeddings(None)
    return vectors.astype(np.float32), [row[0] for row in labels]


def synthesise(base: np.ndarray, n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vectors [n, D] unit-norm, base index per row, part per row)``."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), n)
    out = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n, 100_000):  # in chunks: noise for 1M x 128 at once would double the peak
        stop = min(n, start + 100_000)
        chunk = base[pick[start:stop]] + rng.normal(0, noise, (stop - start, base.shape[1])).astype(np.float32)
        out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out, pick, rng.integers(0, PARTS, n)


def copy_rows(url: str, vectors: np.ndarray, classes: list[str], pick: np.ndarray, parts: np.ndarray) -> float:
    """COPY every row into ``images`` (one COPY, rows streamed); returns seconds."""
    engine = sa.create_engine(url)
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        columns = "uri, sha256, labels, split, width, height, source, added_at, metadata, embedding"
        now = datetime.now(UTC)
        with cursor.copy(f"COPY images ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for i in range(len(vectors)):
                labels = json.dumps([classes[pick[i]], f"part{parts[i]:02d}"])
                split = "test" if i % 10 == 0 else "train"
                copy.write_row(
                    (f"scale://{i}", f"{i:064x}", labels, split, 32, 32, "scale", now, "{}", vectors[i].tobytes())
                )
        raw.commit()
    finally:
        raw.close()
        engine.dispose()
    return time.perf_counter() - started


def _status_mb(pid: int, *fields: str) -> dict[str, float]:
    """Fields of ``/proc/PID/status`` (kB) in MB; {} once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    values = {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines if line.split(":")[0] in fields}
    return values


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run a command to its end; ``(seconds, peak RSS MB)`` of that process alone: its VmHWM, read every 0.2 s
    (``wait4``'s ru_maxrss would include the RSS of this process at the fork)."""
    import subprocess

    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak = 0.0
    while process.poll() is None:
        peak = max(peak, _status_mb(process.pid, "VmHWM").get("VmHWM", 0.0))
        time.sleep(0.2)
    if process.returncode != 0:
        raise RuntimeError(f"{command} exited with {process.returncode}")
    return time.perf_counter() - started, peak


def ground_truth(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Row ids (1-based, as the database's sequence gives them) of the exact top K per query."""
    ids = np.arange(1, len(vectors) + 1)
    pool, pool_ids = (vectors, ids) if mask is None else (vectors[mask], ids[mask])
    out = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ pool.T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        out.append(pool_ids[top])
    return np.concatenate(out)


def measure_search(
    col: Collection, queries: np.ndarray, truth: np.ndarray, labels: list[str] | None
) -> dict[str, float]:
    col.search(queries[:1], K, labels=labels)  # warm: the allowed-id cache of this filter
    times, recalls, short = [], [], 0
    for q, exact in zip(queries, truth, strict=True):
        started = time.perf_counter()
        hits = col.search(q[None], K, labels=labels)[0]
        times.append((time.perf_counter() - started) * 1000)
        got = {h.id for h in hits}
        short += len(got) < K
        recalls.append(len(got & set(exact.tolist())) / K)
    return {
        "recall@10": round(float(np.mean(recalls)), 4),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "answers_short_of_k": short,
    }


def serve_ready(directory: Path, url: str, mmap: bool, work: Path) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env.update(
        MSIR_COLLECTION_DIR=str(directory), MSIR_DATABASE_URL=url, MSIR_HOST="127.0.0.1", MSIR_PORT=str(port),
        MSIR_DEVICE="cpu", MSIR_INDEX_MMAP="true" if mmap else "false", MSIR_TORCH_THREADS="1",
        MSIR_THUMBNAIL_CACHE_DIR=str(work / "thumbs"), PYTHONPATH=str(REPO), MSIR_API_KEY=os.urandom(16).hex(),
    )  # fmt: skip
    started = time.perf_counter()
    server = start_server([str(BIN / "msir-serve")], port=port, log=work / f"serve-{mmap}.log", env=env,
                          timeout_s=600)  # fmt: skip
    ready = time.perf_counter() - started
    try:
        # RssFile: pages of mapped files (the index when mapped), shared by every process mapping the same file.
        rss = _status_mb(server.process.pid, "VmRSS", "RssAnon", "RssFile")
    finally:
        stop_server(server)
    return {"ready_s": round(ready, 1), "rss_mb": round(rss["VmRSS"]), "anon_mb": round(rss["RssAnon"]),
            "file_mb": round(rss["RssFile"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.05, help="Gaussian noise per dimension before renormalising")
    parser.add_argument(
        "--kinds", default="flat,ivfpq,auto", help="index kinds, comma-separated (flat,ivfpq,hnsw,auto)"
    )
    parser.add_argument("--memory-budget", default="2G", help="--memory-budget of the auto kind")
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks")
    args = parser.parse_args()

    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    name = f"msir_scale_{args.rows}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    load_before = os.getloadavg()
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_name("cpu"),
        "threads": 1,
        "rows": args.rows,
        "queries": args.queries,
        "noise": args.noise,
        "embeddings": "demo model (MSCFNet-4, CIFAR-10) on the 1,000 shipped CIFAR-10 images + Gaussian noise",
        "kinds": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="msir-scale-") as tmp:
            work = Path(tmp)
            base, classes = base_embeddings(work)
            log(f"{len(base)} base embeddings of dim {base.shape[1]}")
            vectors, pick, parts = synthesise(base, args.rows, args.noise, seed=0)
            queries, q_pick, _ = synthesise(base, args.queries, args.noise, seed=1)
            directory = work / "collection"
            with Collection.create(directory, CHECKPOINT, url, device="cpu"):
                pass
            result["copy_s"] = round(copy_rows(url, vectors, classes, pick, parts), 1)
            log(f"COPY of {args.rows} rows: {result['copy_s']} s")
            # Filters: the class of each query's own image (~10 %), and one part label (~1 %).
            part_rows = parts == 7
            filters = {"none": (None, None), "10 % (class)": ("class", None), "1 % (part07)": (["part07"], part_rows)}
            truth: dict[str, np.ndarray] = {"none": ground_truth(vectors, queries, None)}
            truth["1 % (part07)"] = ground_truth(vectors, queries, part_rows)
            names = sorted(set(classes))
            base_class = np.asarray([names.index(c) for c in classes])
            row_class = base_class[pick]
            masks = {c: row_class == c for c in range(len(names))}
            truth["10 % (class)"] = np.concatenate(
                [ground_truth(vectors, q[None], masks[base_class[c]]) for q, c in zip(queries, q_pick, strict=True)]
            )
            for kind in args.kinds.split(","):
                index_args = ["--index", kind] + (["--memory-budget", args.memory_budget] if kind == "auto" else [])
                seconds, peak = run_measured([str(BIN / "msir-index"), "rebuild", str(directory), *index_args])
                entry: dict[str, Any] = {"rebuild_s": round(seconds, 1), "rebuild_peak_rss_mb": round(peak)}
                log(f"{kind}: rebuilt in {seconds:.1f} s, peak RSS {peak:.0f} MB")
                with Collection.open(directory, database_url=url, device="cpu") as col:
                    entry["index"] = col.stats()["index"]
                    for label, (labels, _) in filters.items():
                        if labels == "class":
                            rows = [measure_search(col, queries[i : i + 1], truth[label][i : i + 1],
                                                   [classes[q_pick[i]]]) for i in range(len(queries))]  # fmt: skip
                            entry[label] = _merge(rows)
                        else:
                            entry[label] = measure_search(col, queries, truth[label], labels)
                        log(f"{kind} {label}: {entry[label]}")
                for mmap in (False, True):
                    entry["serve_mmap" if mmap else "serve"] = serve_ready(directory, url, mmap, work)
                    log(f"{kind} serve mmap={mmap}: {entry['serve_mmap' if mmap else 'serve']}")
                result["kinds"][kind] = entry
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
    result["load_average"] = {"before": [round(v, 2) for v in load_before], "after": list(os.getloadavg())}
    write(result, args.out)


def _merge(rows: list[dict[str, float]]) -> dict[str, float]:
    """One query per row (each with its own class filter) -> the same summary as a batch of queries."""
    return {
        "recall@10": round(float(np.mean([r["recall@10"] for r in rows])), 4),
        "p50_ms": round(float(np.median([r["p50_ms"] for r in rows])), 2),
        "p95_ms": round(float(np.percentile([r["p50_ms"] for r in rows], 95)), 2),
        "answers_short_of_k": int(sum(r["answers_short_of_k"] for r in rows)),
    }


def write(result: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"scale-{result['rows'] // 1000}k" if result["rows"] < 1_000_000 else f"scale-{result['rows'] // 10**6}m"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Scale: {result['rows']:,} rows in PostgreSQL, one search thread",
        "",
        f"{result['date']}, {result['device']}, load average {result['load_average']['before']} before, "
        f"{[round(v, 2) for v in result['load_average']['after']]} after (the 2 cores are shared: absolute times "
        "are inflated). Embeddings: " + result["embeddings"] + f" (noise {result['noise']} per dimension); "
        f"{result['queries']} held-out queries; exact ground truth by brute force. COPY of the rows: "
        f"{result['copy_s']} s. Search = `Collection.search` (FAISS, the allowed-id cache of a filter, the rows "
        "fetched from PostgreSQL). Written by `benchmarks/scale.py`.",
        "",
        "| index | rebuild s | rebuild peak RSS MB | unfiltered recall@10, p50 / p95 ms | 10 % filter | 1 % filter "
        "| ready s (RSS MB = anon + file) | ready s mmap (RSS MB = anon + file) |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for kind, e in result["kinds"].items():
        cells = [f"{e[f]['recall@10']:.4f}, {e[f]['p50_ms']} / {e[f]['p95_ms']}" + (
            f" ({e[f]['answers_short_of_k']} short of k)" if e[f]["answers_short_of_k"] else "")
            for f in ("none", "10 % (class)", "1 % (part07)")]  # fmt: skip
        name = kind if kind != "auto" else f"auto → {e['index']['type']}"
        serve = [
            f"{v['ready_s']} ({v['rss_mb']} = {v['anon_mb']} + {v['file_mb']})" for v in (e["serve"], e["serve_mmap"])
        ]
        lines.append(
            f"| {name} | {e['rebuild_s']} | {e['rebuild_peak_rss_mb']} | {' | '.join(cells)} | {' | '.join(serve)} |"
        )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out / stem}.json / .md")


if __name__ == "__main__":
    main()
