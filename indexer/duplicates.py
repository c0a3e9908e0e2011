"""Near-duplicate groups: stored images whose copy descriptors' cosine reaches a threshold, joined into groups.

Exact copies (the same bytes) never become two rows: ``sha256`` is unique in the database, and an add of bytes
already stored is reported as a duplicate of the row holding them (``AddReport.duplicates``). What is left to find
are copies that differ in their bytes: re-encoded, resized, slightly cropped, flipped or re-coloured. Two images
are linked when the cosine of their *copy descriptors* (:mod:`models.copy_descriptor`, stored per row; not the
model embedding, which makes distinct images of one class close) is at least ``threshold``; a group is a connected
component of those links (so a group may hold two images linked only through a third). A member whose cosine to the
group's representative (its smallest id, the oldest row) is 1 within :data:`IDENTICAL_COSINE` is reported as
``identical``: the same pixels in a different file.

Pairs come from a FAISS range search: exact (flat inner product) up to :data:`EXACT_MAX` vectors, above it an
inverted-file index (``nlist`` about 4 sqrt(N), :data:`NPROBE` lists visited per vector) whose time grows about
linearly in N: ``benchmarks/duplicates.py`` measures it on 1M vectors and the recall of the pairs it finds.

Rows stored before the copy descriptor existed (migration 0004) have none: :func:`backfill_copy_descriptors` (run by
``msir-index duplicates``) computes them from the rows' files; until then such rows are in no group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol, TypeVar

import faiss
import numpy as np

from indexer import row_paths
from models import open_image
from models.copy_descriptor import copy_descriptor
from msir_core.retrieval.duplicate_threshold import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD  # the CLI's default

logger = logging.getLogger(__name__)

EXACT_MAX = 20_000  # up to this many vectors the pairs are found exactly (flat inner-product range search)
NPROBE = 8  # inverted lists visited per vector above EXACT_MAX
QUERY_BATCH = 65_536  # vectors per range-search call (bounds the memory of one call's results)
IDENTICAL_COSINE = 1e-6


@dataclass(frozen=True)
class DuplicateGroups:
    """Groups of near-duplicates, largest first (then by representative id). Group ``g`` holds
    ``ids[offsets[g]:offsets[g + 1]]``, representative first; ``scores`` is each member's cosine to it."""

    threshold: float
    ids: np.ndarray  # int64
    offsets: np.ndarray  # int64 [groups + 1]
    scores: np.ndarray  # float32, aligned with ids
    vectors: int  # how many vectors were compared
    exact: bool  # pairs found by an exact search (else the inverted-file approximation)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def members(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[g]), int(self.offsets[g + 1])
        return self.ids[lo:hi], self.scores[lo:hi]

    @property
    def grouped(self) -> int:
        """Images that belong to some group."""
        return len(self.ids)

    @cached_property  # computed once per groups value (the service caches the value per index position)
    def group_of(self) -> dict[int, int]:
        """id -> the representative id of its group (only grouped ids)."""
        sizes = np.diff(self.offsets)
        reps = np.repeat(self.ids[self.offsets[:-1]], sizes)
        return dict(zip(self.ids.tolist(), reps.tolist(), strict=True))


def _unit(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def similar_pairs(
    vectors: np.ndarray, threshold: float, *, exact_max: int = EXACT_MAX, nprobe: int = NPROBE
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Row pairs ``(a, b)`` with ``a < b`` and cosine >= ``threshold``, and whether the search was exact."""
    x = _unit(vectors)
    n, d = x.shape
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, True
    exact = n <= exact_max
    index: faiss.Index
    if exact:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(min(max(4 * math.sqrt(n), 16), n // 8))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # coarse cells suffice: a near-duplicate lies close to its original, in its cell
        sample = np.random.default_rng(0).choice(n, size=min(n, 32 * nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.nprobe = nprobe
    index.add(x)
    # range_search keeps scores strictly above the radius: a hair below the threshold keeps scores equal to it.
    radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
    found_a: list[np.ndarray] = []
    found_b: list[np.ndarray] = []
    for start in range(0, n, QUERY_BATCH):
        stop = min(start + QUERY_BATCH, n)
        lims, _, labels = index.range_search(x[start:stop], radius)
        queries = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(lims.astype(np.int64)))
        keep = labels > queries  # each pair once, no self-pairs
        found_a.append(queries[keep])
        found_b.append(labels[keep].astype(np.int64))
    return np.concatenate(found_a), np.concatenate(found_b), exact


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes and edges ``a[i]-b[i]``: each node's root, the smallest node of its
    component. Union by hooking every edge's larger root under the smaller, then pointer jumping, until no edge
    joins two roots (vectorised: a few passes even for millions of edges)."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        lo, hi = np.minimum(ra, rb)[differ], np.maximum(ra, rb)[differ]
        np.minimum.at(parent, hi, lo)  # roots point only to smaller nodes: no cycle can form
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def group_vectors(
    ids: np.ndarray, vectors: np.ndarray, threshold: float, *, exact_max: int = EXACT_MAX, nprobe: int = NPROBE
) -> DuplicateGroups:
    """Near-duplicate groups of ``vectors`` (rows named by ``ids``, int64)."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # the representative is the smallest id: sort so it is the root
    ids, x = ids[order], _unit(vectors[order])
    a, b, exact = similar_pairs(x, threshold, exact_max=exact_max, nprobe=nprobe)
    roots = components(len(ids), a, b)
    grouped = np.unique(np.concatenate([a, b]))
    if not len(grouped):
        return DuplicateGroups(threshold, np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.float32),
                               len(ids), exact)  # fmt: skip
    member_roots = roots[grouped]
    sizes = np.bincount(member_roots, minlength=len(ids))
    # Largest group first, then by representative; members in id order (the representative, the root, first).
    order = np.lexsort((grouped, member_roots, -sizes[member_roots]))
    rows, member_roots = grouped[order], member_roots[order]
    starts = np.flatnonzero(np.r_[True, member_roots[1:] != member_roots[:-1]])
    offsets = np.r_[starts, len(rows)].astype(np.int64)
    scores = np.einsum("ij,ij->i", x[rows], x[member_roots]).astype(np.float32)
    return DuplicateGroups(threshold, ids[rows], offsets, np.minimum(scores, 1.0), len(ids), exact)


class DescriptorSource(Protocol):
    def iter_copy_descriptors(self) -> Iterable[tuple[np.ndarray, np.ndarray]]: ...


class DescriptorStore(DescriptorSource, Protocol):
    def without_copy_descriptor(self) -> list[tuple[int, str | None]]: ...

    def set_copy_descriptors(self, descriptors: dict[int, np.ndarray]) -> None: ...


BACKFILL_BATCH = 256  # descriptors written per transaction while backfilling


@dataclass
class BackfillReport:
    """What :func:`backfill_copy_descriptors` did: rows given a descriptor, and rows skipped with the reason."""

    filled: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (id, reason)


def backfill_copy_descriptors(store: DescriptorStore, directory: Path, max_pixels: int | None = None) -> BackfillReport:
    """Compute the copy descriptor of every row that has none, from the row's file (rows stored before migration
    0004). A row without a file of its own, or whose file is missing or unreadable, is reported and skipped: it
    stays out of every group."""
    report = BackfillReport()
    pending: dict[int, np.ndarray] = {}
    for image_id, stored in store.without_copy_descriptor():
        if stored is None:
            report.skipped.append((image_id, "no file of its own (an item of an array dataset)"))
            continue
        try:
            # The descriptor needs 32x32 pixels: a large JPEG is decoded at a reduced DCT scale.
            img = open_image(row_paths.resolve(directory, stored), max_pixels=max_pixels, min_size=64)
            pending[image_id] = copy_descriptor(img)
        except (OSError, ValueError) as error:  # ImageDecodeError is a ValueError
            report.skipped.append((image_id, str(error) or type(error).__name__))
            continue
        if len(pending) >= BACKFILL_BATCH:
            store.set_copy_descriptors(pending)
            report.filled += len(pending)
            pending = {}
    store.set_copy_descriptors(pending)
    report.filled += len(pending)
    for image_id, reason in report.skipped:
        logger.warning("image %d: no copy descriptor (%s); it is in no near-duplicate group", image_id, reason)
    return report


def stored_groups(store: DescriptorSource, threshold: float) -> DuplicateGroups:
    """Near-duplicate groups of every stored copy descriptor (read from the database, the source of truth)."""
    parts = list(store.iter_copy_descriptors())
    if not parts:
        return group_vectors(np.zeros(0, np.int64), np.zeros((0, 1), np.float32), threshold)
    ids = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    found = group_vectors(ids, vectors, threshold)
    logger.info("%d near-duplicate groups (%d images) among %d at cosine >= %.4f", len(found), found.grouped,
                len(ids), threshold)  # fmt: skip
    return found


class HasId(Protocol):
    @property
    def id(self) -> int: ...


H = TypeVar("H", bound=HasId)


def collapse(hits: Sequence[H], group_of: dict[int, int], k: int) -> list[H]:
    """The first (best) hit of each duplicate group, in order, at most ``k``; ungrouped hits are their own group."""
    seen: set[int] = set()
    out: list[H] = []
    for hit in hits:
        key = group_of.get(hit.id, hit.id)
        if key in seen:
            continue
        seen.add(key)
        out.append(hit)
        if len(out) == k:
            break
    return out
