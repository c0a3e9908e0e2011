"""Decode cache: every image of a split decoded once into a ``uint8 [N, C, H, W]`` ``.npy`` memmap.

A cache is a folder ``<reader>-<split>-<key>/`` holding ``images.npy``, ``labels.npy`` and ``meta.json``
(item ids, class names, what was skipped). The key hashes the reader name, the split, every item id with its
labels and its file's size and mtime, the reader's label/array files, the preprocessing spec and
:data:`FORMAT_VERSION`, so an edited dataset or another spec gives a new cache instead of stale pixels. The
folder is written under a temporary name and renamed when complete: a cache that exists is whole, and loading
it is a memory map (instant).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import secrets
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.preprocessing import ImageDecodeError, PreprocessSpec, open_image, to_uint8
from msir_core.atomic import atomic_write
from msir_core.progress import progress_bar
from msir_data.base import BadItemError, DatasetReader, Item, SkipEntry

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DECODE_FAILED = "decode failed"
# A decode job: (row, file to decode in the worker | None, image already loaded here | None, source, error).
_Job = tuple[int, str | None, Image.Image | None, str, str]
_Result = tuple[int, np.ndarray | None, str]


@dataclass
class CachedSplit:
    """A decoded split: ``images`` memmap; ``labels`` int64 ``[N]`` or uint8 multi-hot ``[N, C]``."""

    images: np.ndarray
    labels: np.ndarray
    item_ids: list[str]
    class_names: list[str]
    multi_label: bool
    split: str
    path: Path
    skipped: list[SkipEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.item_ids)


def default_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def cache_key(reader: DatasetReader, split: str | None, items: list[Item], spec: PreprocessSpec) -> str:
    """Hash of everything the cached arrays depend on."""
    h = hashlib.sha256()
    header = {
        "format": FORMAT_VERSION,
        "reader": reader.name,
        "split": split,
        "classes": reader.class_names,
        "multi_label": reader.multi_label,
        "max_pixels": reader.max_pixels,
        "spec": spec.cache_key(),
        "data_files": [(p.name, *_stat(p)) for p in reader.data_files()],
    }
    h.update(json.dumps(header, sort_keys=True).encode())
    for item in items:
        size, mtime = _stat(item.path) if item.path is not None else (0, 0)
        h.update(f"{item.item_id}\t{item.labels}\t{size}\t{mtime}\n".encode())
    return h.hexdigest()[:20]


def _decode_chunk(jobs: list[_Job], spec: PreprocessSpec, max_pixels: int | None) -> list[_Result]:
    """Runs in a worker process: decode and resize; failures come back as messages, never as exceptions."""
    results: list[_Result] = []
    for row, path, image, source, error in jobs:
        if error:
            results.append((row, None, error))
            continue
        try:
            img = open_image(path, max_pixels=max_pixels, name=source) if path is not None else image
            if img is None:
                raise BadItemError(f"{source}: nothing to decode")
            results.append((row, to_uint8(img, spec), ""))
        except (ImageDecodeError, BadItemError, OSError, ValueError) as exc:
            results.append((row, None, str(exc)))
    return results


def _jobs(reader: DatasetReader, items: list[Item], chunk_size: int) -> Iterator[list[_Job]]:
    """Chunks of decode jobs. File items are opened in the workers; in-memory items (arrays, or readers with
    their own ``load``) are loaded here and only resized there; a load failure here travels as the error."""
    by_path = type(reader).load is DatasetReader.load
    for start in range(0, len(items), chunk_size):
        chunk: list[_Job] = []
        for row, item in enumerate(items[start : start + chunk_size], start):
            if by_path and item.path is not None:
                chunk.append((row, str(item.path), None, item.source, ""))
                continue
            try:
                chunk.append((row, None, reader.load(item), item.source, ""))
            except (ImageDecodeError, BadItemError, OSError) as exc:
                chunk.append((row, None, None, item.source, str(exc) or type(exc).__name__))
        yield chunk


def _pool_context() -> mp.context.BaseContext:
    """fork where available: workers start in milliseconds and share in-memory arrays copy-on-write.

    Forking is safe here because no thread of ours runs meanwhile (the progress bar refreshes from this
    thread, ``auto_refresh=False``) and workers only decode with Pillow and numpy. Python 3.14 changes the
    default to forkserver, which would re-import torch in a server process first (seconds), hence explicit.
    """
    if sys.platform.startswith("linux"):
        return mp.get_context("fork")
    return mp.get_context()  # pragma: no cover - the platform default (spawn on Windows and macOS)


def _decoded(
    reader: DatasetReader, items: list[Item], spec: PreprocessSpec, workers: int, chunk_size: int
) -> Iterator[list[_Result]]:
    """Decoded chunks, in item order; at most ``2 * workers`` chunks in flight (bounded memory)."""
    chunks = _jobs(reader, items, chunk_size)
    if workers <= 0:
        for chunk in chunks:
            yield _decode_chunk(chunk, spec, reader.max_pixels)
        return
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context()) as pool:
        pending: deque[cf.Future[list[_Result]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_decode_chunk, chunk, spec, reader.max_pixels))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _load(folder: Path, reader: DatasetReader) -> CachedSplit:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    images = np.load(folder / "images.npy", mmap_mode="r")
    labels = np.load(folder / "labels.npy")
    n = len(meta["item_ids"])
    if images.shape[0] != n or labels.shape[0] != n or meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{folder}: inconsistent cache ({images.shape[0]} images, {labels.shape[0]} labels, {n} ids)")
    skipped = [SkipEntry(*entry) for entry in meta["skipped"]]
    for entry in skipped:
        # The failures are part of the run's record even when the decode itself was cached.
        reader.skipped.add(entry.source, entry.reason, entry.detail)
    return CachedSplit(
        images=images,
        labels=labels,
        item_ids=list(meta["item_ids"]),
        class_names=list(meta["class_names"]),
        multi_label=bool(meta["multi_label"]),
        split=meta["split"],
        path=folder,
        skipped=skipped,
    )


def cached_split(
    reader: DatasetReader,
    split: str | None,
    spec: PreprocessSpec,
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    chunk_size: int = 64,
    progress: bool = True,
) -> CachedSplit:
    """Decode ``split`` of ``reader`` once (``open_image`` + ``to_uint8``) and memory-map it afterwards.

    ``workers``: decode processes (default ``min(4, CPUs)``; 0 decodes in this process). Items that fail to
    decode are left out of the arrays and recorded in ``reader.skipped`` (and in the cache, so a cached run
    reports them too).
    """
    items = list(reader.items(split))
    key = cache_key(reader, split, items, spec)
    cache_dir = Path(cache_dir)
    folder = cache_dir / f"{_safe(reader.name)}-{_safe(split or 'every')}-{key}"
    if folder.is_dir():
        try:
            cached = _load(folder, reader)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("%s: unreadable cache, rebuilding (%s)", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            logger.info("%s %s: %s images from cache %s", reader.name, split or "(every split)", len(cached), folder)
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _build(
            tmp,
            reader,
            split,
            items,
            spec,
            workers if workers is not None else default_workers(),
            chunk_size,
            progress,
        )
        try:
            os.rename(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            logger.info("%s: built concurrently by another process; using that one", folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s %s: cache written to %s", reader.name, split or "(every split)", folder)
    return _load(folder, reader)


def _build(
    tmp: Path,
    reader: DatasetReader,
    split: str | None,
    items: list[Item],
    spec: PreprocessSpec,
    workers: int,
    chunk_size: int,
    progress: bool,
) -> None:
    height, width = spec.image_size
    shape = (len(items), spec.channels, height, width)
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
    kept: list[int] = []
    skipped: list[SkipEntry] = []
    with progress_bar(disable=not progress, auto_refresh=False) as bar:
        task = bar.add_task(f"decoding {reader.name} {split or ''}".strip(), total=len(items))
        for results in _decoded(reader, items, spec, workers, chunk_size):
            for row, array, error in results:
                if array is None:
                    entry = SkipEntry(items[row].source, DECODE_FAILED, error)
                    skipped.append(entry)
                    reader.skipped.add(entry.source, entry.reason, entry.detail)
                    continue
                images[len(kept)] = array
                kept.append(row)
            bar.advance(task, len(results))
            bar.refresh()
    images.flush()
    del images  # close the map before the file is shrunk or renamed
    if len(kept) < len(items):
        _shrink(tmp / "images.npy", len(kept), shape[1:])
    kept_items = [items[row] for row in kept]
    if reader.multi_label:
        labels = np.zeros((len(kept_items), len(reader.class_names)), dtype=np.uint8)
        for i, item in enumerate(kept_items):
            labels[i, list(item.labels)] = 1
    else:
        labels = np.array([item.labels[0] for item in kept_items], dtype=np.int64)
    np.save(tmp / "labels.npy", labels)
    meta = {
        "format": FORMAT_VERSION,
        "reader": reader.name,
        "root": str(reader.root),
        "split": split,
        "spec": spec.model_dump(mode="json"),
        "class_names": reader.class_names,
        "multi_label": reader.multi_label,
        "item_ids": [item.item_id for item in kept_items],
        "skipped": [[e.source, e.reason, e.detail] for e in skipped],
    }
    (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    logger.info(
        "%s %s: cached %s images (%s failed to decode) in %s",
        reader.name,
        split,
        len(kept),
        len(skipped),
        tmp,
    )


def _shrink(path: Path, rows: int, item_shape: tuple[int, ...]) -> None:
    """Rewrite ``path`` with only its first ``rows`` rows (the decoded ones), chunk by chunk."""

    def write(shrunk: Path) -> None:
        if rows == 0:
            # Through a handle: np.save appends ".npy" to a file name that lacks it.
            with shrunk.open("wb") as fh:
                np.save(fh, np.zeros((0, *item_shape), dtype=np.uint8))
            return
        src = np.load(path, mmap_mode="r")
        dst = np.lib.format.open_memmap(shrunk, mode="w+", dtype=np.uint8, shape=(rows, *item_shape))
        step = 4096
        for start in range(0, rows, step):
            dst[start : start + step] = src[start : min(rows, start + step)]
        dst.flush()
        del src, dst

    atomic_write(path, write)
