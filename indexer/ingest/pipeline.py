"""reader -> embedder -> writer, each stage timed.

* reader: worker processes (``workers``) read bytes, hash them (sha256) and decode + ``to_uint8`` chunks of
  items; a bounded window of chunks is in flight so decoding overlaps inference and memory stays flat.
* embedder: batched forward passes in this process (``inference_mode``; bf16 autocast + channels-last on CUDA).
* writer: one database transaction per batch (rows + embeddings) followed by the FAISS add; the caller's sink
  saves the index periodically. Killed at any point, a re-run skips the uris already stored and the collection
  catches the index up from the database on open, so nothing is lost or indexed twice.

Items whose uri is already stored are skipped before decoding; duplicates by content (sha256) are skipped at
write time; unreadable files are listed with the reason in ``<dir>/reports/build-<timestamp>.csv``. None of
them stops a build.
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.console import Console

from indexer.embedder import Embedder
from indexer.ingest import decode
from indexer.ingest.sources import Source, WorkItem
from indexer.metadata.queries import to_bytes
from indexer.metadata.tables import utcnow
from msir_core.atomic import atomic_write
from msir_core.progress import progress_bar

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000


class Sink(Protocol):
    """Where the writer stage puts batches (implemented by :class:`indexer.Collection`)."""

    def existing_uris(self, uris: Sequence[str]) -> dict[str, int]: ...

    def commit(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> tuple[list[int | None], dict[int, int]]: ...


@dataclass
class BuildReport:
    """What a build or add did, with per-stage wall seconds."""

    total: int = 0
    added: list[int] = field(default_factory=list)
    already_present: list[tuple[str, int]] = field(default_factory=list)  # (uri, id): skipped by uri (resume)
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # (uri, id holding the same content)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    listing_skipped: list[tuple[str, str]] = field(default_factory=list)  # found bad while listing the source
    labelled: int = 0  # already-present images without labels that this source's labels were given to
    note: str | None = None  # how the source's labels were found
    timings: dict[str, float] = field(default_factory=dict)
    report_path: Path | None = None

    @property
    def images_per_s(self) -> float:
        wall = self.timings.get("wall_s", 0.0)
        processed = len(self.added) + len(self.duplicates) + len(self.failed)
        return processed / wall if wall > 0 else 0.0

    def stage_table(self) -> list[tuple[str, float, float]]:
        """``(stage, seconds, share of wall time)``; reader time is the writer's wait for decoded chunks."""
        wall = self.timings.get("wall_s", 0.0) or 1e-9
        stages = [("reader (wait)", "reader_wait_s"), ("embedder", "embed_s"), ("writer", "write_s")]
        rows = [(name, self.timings.get(key, 0.0), self.timings.get(key, 0.0) / wall) for name, key in stages]
        other = max(0.0, wall - sum(r[1] for r in rows))
        rows.append(("other (listing, lookups)", other, other / wall))
        return rows

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "added": len(self.added),
            "already_present": len(self.already_present),
            "duplicates": len(self.duplicates),
            "failed": len(self.failed),
            "listing_skipped": len(self.listing_skipped),
            "labelled": self.labelled,
            "note": self.note,
            "images_per_s": round(self.images_per_s, 2),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "stages": [{"stage": n, "seconds": round(s, 4), "share": round(f, 4)} for n, s, f in self.stage_table()],
            "report": str(self.report_path) if self.report_path else None,
        }


def _chunks(items: Sequence[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _pool(workers: int, source: Source, max_pixels: int | None) -> ProcessPoolExecutor:
    # fork: workers inherit the already-open reader (and imports) for free; spawn elsewhere reopens it.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    decode.set_reader(source.reader)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=decode.init_worker,
        # The workers die with this process on any signal, SIGKILL included (no orphan decoding on for good).
        initargs=(source.reader_args if method == "spawn" else None, max_pixels, os.getpid()),
    )


def run_pipeline(
    source: Source,
    embedder: Embedder,
    sink: Sink,
    *,
    batch_size: int = 256,
    workers: int = 0,
    chunk_size: int = 64,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    report_dir: Path | None = None,
) -> BuildReport:
    """Index ``source`` into ``sink``. ``workers=0`` decodes in this process (small adds, tests)."""
    if batch_size < 1 or workers < 0 or chunk_size < 1:
        raise ValueError(
            f"batch_size/chunk_size must be >= 1 and workers >= 0, got {batch_size}/{chunk_size}/{workers}"
        )
    started = time.perf_counter()
    report = BuildReport(total=len(source.items), listing_skipped=list(source.skipped))
    timings = {"reader_wait_s": 0.0, "reader_cpu_s": 0.0, "embed_s": 0.0, "write_s": 0.0, "lookup_s": 0.0}
    spec = embedder.spec
    pending_items: list[WorkItem] = []
    pending_decoded: list[decode.Decoded] = []

    def flush() -> None:
        if not pending_decoded:
            return
        t0 = time.perf_counter()
        result = embedder.embed_uint8(np.stack([d.pixels for d in pending_decoded]))
        t1 = time.perf_counter()
        now = utcnow()
        rows = [
            {
                "uri": item.uri,
                "path": item.path,
                "sha256": d.sha256,
                "labels": list(item.labels),
                "split": item.split,
                "width": d.width,
                "height": d.height,
                "source": item.source,
                "added_at": now,
                "user_metadata": item.metadata,
                "embedding": to_bytes(vec),
                "copy_descriptor": to_bytes(d.copy),
            }
            for item, d, vec in zip(pending_items, pending_decoded, result.embeddings, strict=True)
        ]
        ids, duplicate_of = sink.commit(rows, result.embeddings)
        t2 = time.perf_counter()
        timings["embed_s"] += t1 - t0
        timings["write_s"] += t2 - t1
        for i, item in enumerate(pending_items):
            new_id = ids[i]
            if new_id is not None:
                report.added.append(new_id)
            else:
                report.duplicates.append((item.uri, duplicate_of[i]))
        pending_items.clear()
        pending_decoded.clear()

    def consume(chunk: list[WorkItem], results: list[decode.Decoded | decode.Failed], cpu_s: float) -> None:
        timings["reader_cpu_s"] += cpu_s
        for res in results:
            item = chunk[res.position]
            if isinstance(res, decode.Failed):
                report.failed.append((item.uri, res.reason))
                logger.warning("skipped %s: %s", item.uri, res.reason)
                continue
            pending_items.append(item)
            pending_decoded.append(res)
            if len(pending_decoded) >= batch_size:
                flush()

    def fresh(chunk: list[WorkItem]) -> list[WorkItem]:
        t0 = time.perf_counter()
        stored = sink.existing_uris([item.uri for item in chunk])
        timings["lookup_s"] += time.perf_counter() - t0
        report.already_present.extend((item.uri, stored[item.uri]) for item in chunk if item.uri in stored)
        return [item for item in chunk if item.uri not in stored]

    with progress_bar(console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"indexing {source.name}", total=len(source.items))
        if workers == 0:
            for chunk in _chunks(source.items, chunk_size):
                todo = fresh(chunk)
                if todo:
                    t0 = time.perf_counter()
                    results, cpu_s = decode.decode_chunk(todo, spec, max_pixels)
                    timings["reader_wait_s"] += time.perf_counter() - t0
                    consume(todo, results, cpu_s)
                bar.advance(task, len(chunk))
        else:
            pool = _pool(workers, source, max_pixels)
            try:
                window: deque[tuple[list[WorkItem], int, Future[Any]]] = deque()
                chunks = _chunks(source.items, chunk_size)
                exhausted = False
                while True:
                    # Keep the workers busy while this process runs inference on what came back.
                    while not exhausted and len(window) < 3 * workers:
                        listed: list[WorkItem] | None = next(chunks, None)
                        if listed is None:
                            exhausted = True
                            break
                        todo = fresh(listed)
                        if not todo:
                            bar.advance(task, len(listed))
                            continue
                        window.append((todo, len(listed), pool.submit(decode.decode_chunk, todo, spec, max_pixels)))
                    if not window:
                        break
                    todo, size, future = window.popleft()
                    t0 = time.perf_counter()
                    results, cpu_s = future.result()
                    timings["reader_wait_s"] += time.perf_counter() - t0
                    consume(todo, results, cpu_s)
                    bar.advance(task, size)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
                decode.set_reader(None)
        flush()
    timings["wall_s"] = time.perf_counter() - started
    report.timings = timings
    if report_dir is not None and (report.failed or report.duplicates or report.listing_skipped):
        report.report_path = write_report(report_dir, report)
    logger.info(
        "%s: %d added, %d already present, %d duplicates, %d failed, %d skipped while listing (%.1f img/s)",
        source.name,
        len(report.added),
        len(report.already_present),
        len(report.duplicates),
        len(report.failed),
        len(report.listing_skipped),
        report.images_per_s,
    )
    return report


def write_report(report_dir: Path, report: BuildReport) -> Path:
    """``reports/build-<timestamp>.csv``: ``source,status,reason`` of every failed, duplicate or listing-skipped
    item."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = report_dir / f"build-{stamp}.csv"

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["source", "status", "reason"])
            for uri, reason in report.listing_skipped:
                out.writerow([uri, "skipped", reason])
            for uri, reason in report.failed:
                out.writerow([uri, "failed", reason])
            for uri, existing in report.duplicates:
                out.writerow([uri, "duplicate", f"same content (sha256) as id {existing}"])

    atomic_write(path, write)
    return path
