"""The FAISS side of a collection: inner product on L2-normalised embeddings (= cosine), ids = database ids.

Index types:

* ``flat``: exact search, ``IndexIDMap2(IndexFlatIP)``. The default.
* ``ivfpq``: ``IndexIVFPQ`` with its own ids (``add_with_ids``/``remove_ids`` are native to IVF; wrapping IVF in
  ``IndexIDMap2`` breaks after a removal) plus an exact store ``IndexIDMap2(IndexFlatIP)`` saved beside it
  (``index.vectors.faiss``). A search takes a shortlist of ``k * refine_factor`` from the IVF-PQ index and
  re-ranks it exactly with the stored vectors, so scores are exact cosines. Until ``train_size`` vectors exist the
  index is untrained and searches go to the exact store; training happens once, on the vectors present then
  (``nlist``/``m``/``nprobe`` default to values derived from that count, the dimension and ``nlist``); bulk loads
  (builds, rebuilds, catch-up) train once at their end on everything; ``rebuild`` retrains.
* ``hnsw``: ``IndexIDMap2(IndexHNSWFlat)``. FAISS cannot remove from an HNSW graph, so a removal marks the ids
  deleted (a tombstone set, saved beside the index as ``index.deleted.npy``) and every search excludes them with
  an ``IDSelector``; the graph keeps the nodes, so it stays navigable. Once more than
  :data:`HNSW_COMPACT_FRACTION` of the graph's nodes are deleted, the index is compacted: a new graph from the
  vectors it holds (no database read). A removal, here or followed from another process, costs no O(N) rebuild.

Memory-mapped (``load(..., mmap=True)``, the service's ``MSIR_INDEX_MMAP``): the vectors of a saved index are
mapped from its file (``faiss.IO_FLAG_MMAP_IFC``: the float array of an ``IndexFlat``, read-only and zero-copy)
instead of read into memory, so opening takes milliseconds whatever the size, pages are read on first touch, and
processes serving the same files share them in the page cache. What is mapped per kind:

* ``flat``: every vector (the whole index but its id map);
* ``hnsw``: the vectors (the graph's storage); the graph's neighbour lists are read into memory (FAISS has no
  mapping for them);
* ``ivfpq``: the exact store (``index.vectors.faiss``: every vector, the bulk of the index); the IVF-PQ codes are
  read into memory: FAISS maps them only as ``OnDiskInvertedLists``, which it can neither clone nor copy back into
  memory for a write, and they are small (``m`` bytes a vector).

FAISS cannot write into a mapped array (it aborts the process), so the first mutation — an add, a removal from a
flat or IVF index — first copies the mapped parts into memory (copy-on-write, once; logged), after which the index
behaves as if loaded normally. HNSW tombstones are not a mutation of the graph: a follower of removals keeps its
mapping, and a compaction builds its new graph in memory from the mapped vectors.

GPU: with a CUDA device and a FAISS built with GPU support, searches run on a GPU clone made lazily with
``index_cpu_to_gpu``; every mutation goes to the CPU index (GPU indexes cannot ``remove_ids``) and drops the clone.
HNSW has no GPU implementation and stays on the CPU.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.errors import CollectionError
from msir_core.atomic import atomic_write

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
VECTORS_FILE = "index.vectors.faiss"
DELETED_FILE = "index.deleted.npy"  # hnsw: ids removed from the collection but still nodes of the graph
# hnsw: compact (rebuild the graph from its own live vectors) once this fraction of its nodes is deleted; below it a
# tombstone costs a selector check per visited node, above it the dead nodes dominate memory and search time.
HNSW_COMPACT_FRACTION = 0.2
INDEX_TYPES = ("flat", "ivfpq", "hnsw")
# A filter that lets at most this many ids through is answered by scoring those vectors exactly (reconstruct +
# one matrix product) instead of an IDSelector search: exact, and faster than a selector search at that size
# (measured on 20k x 32-d clustered vectors; see indexer/README.md, "Filtered search").
EXACT_FILTER_MAX = 4096
# Cap of the efSearch a selective filter raises an HNSW search to.
HNSW_FILTER_EF_MAX = 2048
# Vectors encoded per add_with_ids call when IVF-PQ is filled after training (bounds FAISS's temporary buffers).
TRAIN_ADD_SLICE = 65_536
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "flat": {},
    # nlist / m / nprobe = None: chosen at training time from the vector count, the dimension and nlist.
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": None, "refine_factor": 30, "train_size": 10_000},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 128},
}


def resolve_options(index_type: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in; unknown types/options and bad values raise naming what is accepted."""
    if index_type not in DEFAULT_OPTIONS:
        raise CollectionError(f"unknown index type {index_type!r}; expected one of {list(INDEX_TYPES)}")
    accepted = DEFAULT_OPTIONS[index_type]
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise CollectionError(
            f"unknown option(s) {unknown} for index type {index_type!r}; accepted: {sorted(accepted) or 'none'}"
        )
    resolved = {**accepted, **given}
    for key, value in resolved.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CollectionError(f"index option {key}={value!r} must be a positive integer")
    if index_type == "ivfpq" and resolved["nbits"] > 16:
        raise CollectionError(f"index option nbits={resolved['nbits']} must be <= 16")
    return resolved


def _as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_ids(ids: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _save_npy(path: Path, array: np.ndarray) -> None:
    # Through a file object: np.save given a path not ending in .npy would append .npy to the temp file's name.
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _flat_store(dim: int) -> faiss.IndexIDMap2:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def default_m(dim: int) -> int:
    """Largest divisor of ``dim`` giving sub-vectors of at least 4 dimensions (PQ needs ``dim % m == 0``)."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def default_nlist(n: int) -> int:
    # ~sqrt(n) lists (the usual rule), but at least 39 training points per centroid (FAISS's own minimum).
    return max(1, min(int(math.sqrt(n)), n // 39, 65_536))


def _in_memory(index: faiss.Index) -> faiss.Index:
    """An in-memory copy of an index whose arrays may be mapped views (``clone_index`` would copy the views)."""
    return faiss.deserialize_index(faiss.serialize_index(index))


def _gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class VectorIndex:
    """One FAISS index (plus the exact store for ``ivfpq``). Not thread-safe: :class:`Collection` locks."""

    def __init__(
        self,
        index_type: str,
        dim: int,
        options: dict[str, Any] | None = None,
        *,
        main: Any = None,
        exact: Any = None,
        device: str = "cpu",
    ) -> None:
        self.index_type = index_type
        self.dim = int(dim)
        self.options = resolve_options(index_type, options)
        self.device = device
        self._gpu: faiss.Index | None = None
        self._gpu_failed = False
        self._gpu_lock = threading.Lock()
        self.deleted: np.ndarray = np.zeros(0, np.int64)  # hnsw tombstones, sorted
        self.mapped = False  # vectors are mapped from the saved file (read-only): copied in before a mutation
        # Any: the SWIG classes (IndexIDMap2, IndexIVFPQ...) are not visible to type checkers as such.
        self.main: Any
        self.exact: Any = None
        if index_type == "flat":
            self.main = main if main is not None else _flat_store(self.dim)
        elif index_type == "hnsw":
            if main is None:
                hnsw = faiss.IndexHNSWFlat(self.dim, self.options["M"], faiss.METRIC_INNER_PRODUCT)
                hnsw.hnsw.efConstruction = self.options["ef_construction"]
                main = faiss.IndexIDMap2(hnsw)
            self.main = main
        else:
            self.exact = exact if exact is not None else _flat_store(self.dim)
            self.main = main if main is not None else self._untrained_ivfpq(self.options["nlist"] or 1)
        if self.main.d != self.dim:
            raise CollectionError(f"FAISS index has dimension {self.main.d}, expected {self.dim}")

    # -- construction ----------------------------------------------------------------------------------------
    def _untrained_ivfpq(self, nlist: int) -> faiss.IndexIVFPQ:
        m = self.options["m"] or default_m(self.dim)
        if self.dim % m:
            raise CollectionError(f"ivfpq option m={m} must divide the embedding dimension {self.dim}")
        quantizer = faiss.IndexFlatIP(self.dim)
        # The Python wrapper keeps ``quantizer`` alive as long as the index (referenced_objects).
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, self.options["nbits"], faiss.METRIC_INNER_PRODUCT)
        index.nprobe = self.effective_nprobe(nlist)
        return index

    def effective_nprobe(self, nlist: int) -> int:
        # Default: an eighth of the lists, at least 32 (measured: results/benchmarks/index_throughput-*.md).
        return min(nlist, self.options["nprobe"] or max(32, nlist // 8))

    def _train(self) -> None:
        """Train IVF-PQ on the vectors in the exact store, then add them all."""
        assert self.exact is not None
        n = int(self.exact.ntotal)
        # A view of the exact store's own float array, not a copy: training needs only its sample in memory again
        # and the codes are added in slices (a rebuild's peak is the index itself plus one slice).
        flat = faiss.downcast_index(self.exact.index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)
        ids = faiss.vector_to_array(self.exact.id_map).astype(np.int64)
        nlist = self.options["nlist"] or default_nlist(n)
        index = self._untrained_ivfpq(nlist)
        # Few points per centroid is expected at the lower end; FAISS would print a warning per sub-quantizer.
        index.cp.min_points_per_centroid = 1
        index.pq.cp.min_points_per_centroid = 1
        # The shortlist is re-ranked exactly, so PQ codes only need to be good enough to shortlist: a lighter
        # codebook training (10 iterations, <= 64 points per centroid) is ~5x faster at the same recall.
        index.pq.cp.niter = 10
        index.pq.cp.max_points_per_centroid = 64
        rng = np.random.default_rng(0)
        sample = vectors if n <= 200_000 else vectors[rng.choice(n, 200_000, replace=False)]
        logger.info(
            "training IVF-PQ (nlist=%d, m=%d, nbits=%d) on %d vectors",
            nlist,
            index.pq.M,
            index.pq.nbits,
            len(sample),
        )
        index.train(_as_f32(sample))
        for start in range(0, n, TRAIN_ADD_SLICE):
            index.add_with_ids(vectors[start : start + TRAIN_ADD_SLICE], ids[start : start + TRAIN_ADD_SLICE])
        self.main = index

    def maybe_train(self) -> bool:
        """Train an untrained ivfpq index holding at least ``train_size`` vectors; True when it trained."""
        if self.exact is None or self.trained or self.exact.ntotal < self.min_train:
            return False
        self._gpu = None
        self._train()
        return True

    @property
    def min_train(self) -> int:
        """Vectors needed before training: ``train_size``, but never fewer than the PQ or IVF centroids."""
        return max(self.options["train_size"], 2 ** self.options["nbits"], self.options["nlist"] or 1)

    @property
    def trained(self) -> bool:
        return self.index_type != "ivfpq" or bool(self.main.is_trained)

    @property
    def ntotal(self) -> int:
        store = self.exact if self.exact is not None else self.main
        return int(store.ntotal) - len(self.deleted)

    @property
    def supports_remove(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"type": self.index_type, "options": dict(self.options), "ntotal": self.ntotal}
        if self.index_type == "hnsw":
            info["deleted"] = len(self.deleted)  # tombstones awaiting compaction
        if self.index_type == "ivfpq":
            info["trained"] = self.trained
            if self.trained:
                info["nlist"] = int(self.main.nlist)
                info["m"] = int(self.main.pq.M)
                info["nprobe"] = int(self.main.nprobe)
        info["device"] = "gpu" if self._gpu is not None else "cpu"
        info["mmap"] = self.mapped
        return info

    def _own(self) -> None:
        """Copy-on-write: before the first mutation, the mapped (read-only) parts become in-memory copies."""
        if not self.mapped:
            return
        logger.info("copying the memory-mapped %s index into memory before a write (%d vectors)", self.index_type,
                    self.ntotal)  # fmt: skip
        if self.exact is not None:
            self.exact = _in_memory(self.exact)
        else:
            self.main = _in_memory(self.main)
        self.mapped = False

    # -- mutation (CPU index; the GPU clone is dropped) ---------------------------------------------------------
    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray, *, train: bool = True) -> None:
        """Add vectors. ivfpq trains once ``train_size`` vectors exist; bulk loads pass ``train=False`` and call
        :meth:`maybe_train` at the end, so training sees every vector (and ``nlist`` fits the final count)."""
        ids = _as_ids(ids)
        vectors = _as_f32(vectors)
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim):
            raise CollectionError(f"vectors of shape {vectors.shape} do not match {len(ids)} ids of dim {self.dim}")
        self._gpu = None
        self._own()
        if len(self.deleted) and np.isin(ids, self.deleted).any():
            # A deleted id coming back (SQLite may reuse the largest id): its old node must go first.
            self.compact()
        if self.exact is not None:
            self.exact.add_with_ids(vectors, ids)
            if self.trained:
                self.main.add_with_ids(vectors, ids)
            elif train:
                self.maybe_train()
        else:
            self.main.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray | list[int]) -> int:
        ids = _as_ids(ids)
        if len(ids) == 0:
            return 0
        self._gpu = None
        if self.index_type == "hnsw":
            return self._tombstone(ids)
        self._own()
        selector = faiss.IDSelectorBatch(ids)
        if self.exact is not None:
            removed = int(self.exact.remove_ids(selector))
            if self.trained:
                self.main.remove_ids(selector)
            return removed
        return int(self.main.remove_ids(selector))

    def _tombstone(self, ids: np.ndarray) -> int:
        """HNSW removal: mark the ids deleted (searches exclude them); compact when enough are."""
        held = np.unique(ids[np.isin(ids, self._graph_ids())])
        fresh = np.setdiff1d(held, self.deleted, assume_unique=True)
        self.deleted = np.union1d(self.deleted, fresh)
        if len(self.deleted) > HNSW_COMPACT_FRACTION * max(int(self.main.ntotal), 1):
            self.compact()
        return len(fresh)

    def compact(self) -> None:
        """HNSW: a new graph of the live vectors (read back from the graph itself), tombstones cleared."""
        if self.index_type != "hnsw" or not len(self.deleted):
            return
        everything = self._graph_ids()
        live = np.setdiff1d(everything, self.deleted, assume_unique=True)
        logger.info("compacting the HNSW index: %d live of %d nodes", len(live), len(everything))
        vectors = self.main.reconstruct_batch(live) if len(live) else np.zeros((0, self.dim), np.float32)
        hnsw = faiss.IndexHNSWFlat(self.dim, self.options["M"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self.options["ef_construction"]
        main = faiss.IndexIDMap2(hnsw)
        if len(live):
            main.add_with_ids(_as_f32(vectors), live)
        self.main = main
        self.mapped = False  # the new graph is built in memory (from the mapped vectors, read only)
        self.deleted = np.zeros(0, np.int64)
        self._gpu = None

    def _graph_ids(self) -> np.ndarray:
        store = self.exact if self.exact is not None else self.main
        return np.sort(faiss.vector_to_array(store.id_map).astype(np.int64))

    # -- reading ----------------------------------------------------------------------------------------------
    def ids(self) -> np.ndarray:
        """Every id in the index, sorted (int64); deleted (tombstoned) ids are not in it."""
        found = self._graph_ids()
        return np.setdiff1d(found, self.deleted, assume_unique=True) if len(self.deleted) else found

    def contains(self, ids: np.ndarray | list[int]) -> list[bool]:
        """Whether each id is in the index (what following the change feed checks before applying a change)."""
        wanted = _as_ids(ids)
        if len(wanted) == 0:
            return []
        return np.isin(wanted, self.ids(), assume_unique=False).tolist()

    def ann_ids(self) -> np.ndarray:
        """Ids held by the IVF-PQ part (ivfpq only; equals :meth:`ids` when consistent)."""
        if self.index_type != "ivfpq" or not self.trained:
            return self.ids()
        invlists = self.main.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(invlists.nlist)
            if invlists.list_size(i)
        ]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def reconstruct(self, ids: np.ndarray | list[int]) -> np.ndarray:
        store = self.exact if self.exact is not None else self.main
        return store.reconstruct_batch(_as_ids(ids))

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [Q, k], ids [Q, k])`` best first; missing results have id -1 and score -inf.

        ``allowed``: sorted int64 ids, the only ones that may be returned (a label/split filter resolved by the
        database). Few of them (<= :data:`EXACT_FILTER_MAX`) are scored exactly; more become an ``IDSelector``
        inside the FAISS search itself (see :meth:`_selector_params`), so k results come back whenever k allowed
        vectors are in the index."""
        queries = _as_f32(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise CollectionError(f"queries have dimension {queries.shape[1]}, the index holds {self.dim}")
        if allowed is not None:
            allowed = _as_ids(allowed)
            if len(self.deleted):
                allowed = np.setdiff1d(allowed, self.deleted)
            return self._search_allowed(queries, k, allowed)
        k = max(1, min(int(k), max(1, self.ntotal)))
        if self.index_type == "ivfpq":
            return self._search_ivfpq(queries, k)
        if len(self.deleted):  # hnsw tombstones: every live id but those
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.deleted))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.options["ef_search"], k))  # type: ignore[attr-defined]
            params.referenced_selector = selector
            return self._clean(*self.main.search(queries, k, params=params))
        index = self._search_index()
        if self.index_type == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.options["ef_search"], k))  # type: ignore[attr-defined]
            scores, ids = index.search(queries, k, params=params)
        else:
            scores, ids = index.search(queries, k)
        return self._clean(scores, ids)

    def _search_allowed(self, queries: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = max(1, min(int(k), max(1, len(allowed))))
        if len(allowed) == 0 or self.ntotal == 0:
            return self._clean(np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64))
        if len(allowed) <= EXACT_FILTER_MAX:
            exact = self._search_exact_subset(queries, k, allowed)
            if exact is not None:
                return exact
        if self.index_type == "ivfpq" and self.trained:
            return self._search_ivfpq(queries, k, allowed)
        store = self.exact if self.exact is not None else self.main  # an untrained ivfpq searches its exact store
        params = self._selector_params(allowed, k, hnsw=store is self.main and self.index_type == "hnsw")
        # Selectors run on the CPU index: FAISS's GPU indexes do not take them.
        scores, ids = store.search(queries, k, params=params)
        return self._clean(scores, ids)

    def _search_exact_subset(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Score the few allowed vectors exactly (every index type keeps them: flat/HNSW in the index, ivfpq in
        its exact store); None when an allowed id is not in the index (the database is ahead of this copy, e.g. a
        follower between polls), so the caller takes the selector path, which simply never meets that id."""
        store = self.exact if self.exact is not None else self.main
        try:
            vectors = store.reconstruct_batch(allowed)
        except RuntimeError:
            return None
        scores = queries @ vectors.T
        top = min(k, len(allowed))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :top]
        out_scores = np.take_along_axis(scores, order, 1)
        out_ids = allowed[order]
        if top < k:
            out_scores = np.pad(out_scores, ((0, 0), (0, k - top)), constant_values=-np.inf)
            out_ids = np.pad(out_ids, ((0, 0), (0, k - top)), constant_values=-1)
        return self._clean(out_scores, out_ids)

    def _selector_params(self, allowed: np.ndarray, k: int, *, hnsw: bool = False, nprobe: int | None = None) -> Any:
        """FAISS search parameters restricting a search to ``allowed``. IVF (``SearchParametersIVF``) and HNSW
        (``SearchParametersHNSW``) apply the selector while scanning, also through ``IndexIDMap2``, which
        translates it to its internal ids. HNSW still walks the whole graph but only allowed nodes enter the
        result heap, so when few rows pass, ``efSearch`` is raised in proportion (1/fraction allowed, capped):
        with a fixed efSearch a 1 % filter leaves the candidate list mostly full of rejected nodes."""
        selector = faiss.IDSelectorBatch(allowed)
        if hnsw:
            fraction = max(len(allowed) / max(self.ntotal, 1), 1e-6)
            ef = max(self.options["ef_search"], k)
            ef = int(min(max(ef, ef / math.sqrt(fraction)), HNSW_FILTER_EF_MAX))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)  # type: ignore[attr-defined]
        elif nprobe is not None:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)  # type: ignore[attr-defined]
        else:
            params = faiss.SearchParameters(sel=selector)  # type: ignore[attr-defined]
        # The parameters hold only a raw pointer to the selector: keep it alive as long as they are.
        params.referenced_selector = selector
        return params

    def _search_ivfpq(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.exact is not None
        if not self.trained:
            return self._clean(*self.exact.search(queries, k))
        total = self.ntotal if allowed is None else min(self.ntotal, len(allowed))
        shortlist = max(k, min(total, k * self.options["refine_factor"]))
        if allowed is None:
            # nprobe lives on the index (set when built or loaded) so a GPU clone inherits it.
            _, cand = self._search_index().search(queries, shortlist)
        else:
            # The nearest allowed vectors of a selective filter lie farther out, often in lists an unfiltered
            # search would not probe: raise nprobe by 1/sqrt(fraction passing), as efSearch for HNSW (measured on
            # 20k x 32-d clustered vectors, 1 % passing: recall 0.90 at the unfiltered nprobe, 1.0 raised).
            fraction = max(len(allowed) / max(self.ntotal, 1), 1e-6)
            nprobe = min(int(self.main.nlist), math.ceil(int(self.main.nprobe) / math.sqrt(fraction)))
            params = self._selector_params(allowed, k, nprobe=nprobe)
            _, cand = self.main.search(queries, shortlist, params=params)
        # Exact re-ranking of the shortlist with the stored float vectors.
        flat = cand.reshape(-1)
        valid = flat >= 0
        vectors = np.zeros((len(flat), self.dim), np.float32)
        if valid.any():
            vectors[valid] = self.exact.reconstruct_batch(_as_ids(flat[valid]))
        scores = np.einsum("qkd,qd->qk", vectors.reshape(len(queries), shortlist, self.dim), queries)
        scores[cand < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return self._clean(np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1))

    @staticmethod
    def _clean(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = np.asarray(scores, np.float32).copy()
        scores[ids < 0] = -np.inf
        return scores, np.asarray(ids, np.int64)

    def _search_index(self) -> faiss.Index:
        if self.device != "cuda" or self.index_type == "hnsw" or self._gpu_failed or not _gpu_available():
            return self.main
        gpu = self._gpu
        if gpu is not None:
            return gpu
        with self._gpu_lock:
            if self._gpu is None and not self._gpu_failed:
                try:
                    self._gpu_resources = faiss.StandardGpuResources()
                    self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.main)
                except RuntimeError as error:  # e.g. a PQ layout the GPU kernels do not support
                    logger.warning(
                        "FAISS GPU clone of the %s index failed (%s); searching on CPU",
                        self.index_type,
                        error,
                    )
                    self._gpu_failed = True
            return self._gpu if self._gpu is not None else self.main

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Atomically write ``index.faiss`` (and ``index.vectors.faiss`` for ivfpq, ``index.deleted.npy`` for hnsw).

        The tombstones go after the graph: a crash between the two leaves tombstones of a graph compacted without
        those ids (harmless: they match no node) or, if no graph change happened, the previous tombstones, which
        the open's consistency check finds as rows the index still holds and catches up."""
        if self.exact is not None:
            atomic_write(directory / VECTORS_FILE, lambda tmp: faiss.write_index(self.exact, str(tmp)))
        atomic_write(directory / INDEX_FILE, lambda tmp: faiss.write_index(self.main, str(tmp)))
        if self.index_type == "hnsw":
            atomic_write(directory / DELETED_FILE, lambda tmp: _save_npy(tmp, self.deleted))
        else:
            (directory / DELETED_FILE).unlink(missing_ok=True)

    @classmethod
    def load(
        cls,
        directory: Path,
        index_type: str,
        dim: int,
        options: dict[str, Any] | None,
        device: str = "cpu",
        *,
        mmap: bool = False,
    ) -> VectorIndex:
        """The saved index; ``mmap``: its vectors mapped from the files (see the module's text)."""
        mapped = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        path = directory / INDEX_FILE
        # ivfpq: only the exact store is mapped (the IVF-PQ codes are read into memory).
        main = cls._read(path, 0 if index_type == "ivfpq" else mapped)
        exact = cls._read(directory / VECTORS_FILE, mapped) if index_type == "ivfpq" else None
        loaded = cls(index_type, dim, options, main=main, exact=exact, device=device)
        loaded.mapped = mmap
        deleted = directory / DELETED_FILE
        if index_type == "hnsw" and deleted.is_file():
            loaded.deleted = np.sort(np.load(deleted, allow_pickle=False).astype(np.int64))
        if index_type == "ivfpq" and loaded.trained:
            loaded.main.nprobe = loaded.effective_nprobe(int(loaded.main.nlist))
        return loaded

    @staticmethod
    def _read(path: Path, flags: int = 0) -> faiss.Index:
        if not path.is_file():
            raise CollectionError(f"{path}: FAISS index file missing; run `msir-index rebuild {path.parent}`")
        try:
            return faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise CollectionError(
                f"{path}: not a readable FAISS index ({str(error).splitlines()[0]}); "
                f"run `msir-index rebuild {path.parent}` to rebuild it from the database"
            ) from error
