"""Filtered k-NN over the vector store.

Filters (labels, split, excluded ids / sha256) live in the database. Two ways to apply them:

* **pushed down** (``pushdown``): the store restricts the search itself and is asked for exactly k (plus the
  few excluded ids/hashes). Milvus applies scalar filters; FAISS takes the ids that pass a label/split filter
  (``Filters.allowed``, resolved by the database) as an ``IDSelector`` inside the search: flat, HNSW and IVF
  indexes all honour one (``SearchParameters``/``SearchParametersHNSW``/``SearchParametersIVF``, through
  ``IndexIDMap2`` too), and very selective filters are scored exactly over just the allowed vectors
  (:meth:`indexer.vectors.faiss_index.VectorIndex.search`). A filtered query then returns k results whenever
  k rows pass, at the recall of an unfiltered one; an over-fetched candidate list cannot promise that (at 1 %
  of rows passing, IVF-PQ answered with fewer than k and recall 0.54, issue #26).
* **over-fetch** (only exclusions, or a store that takes no filters): ask for ``4k`` plus the excluded count,
  drop rows that do not pass, and ask again with four times as many until every query has ``k`` hits or the
  whole index has been ranked.

Either way the rows are read and checked here, so candidates whose row was just deleted or edited by a
concurrent write are dropped (and, pushed down, the store is asked again for more).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from indexer.errors import CollectionError
from indexer.records import Hit, ImageRecord
from msir_core.retrieval.rerank import RerankConfig, expand_queries, rerank_shortlist

# (queries, k) -> (scores [Q, k], ids [Q, k], number of vectors in the index)
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, int]]
GetMany = Callable[[Iterable[int]], dict[int, ImageRecord]]


@dataclass(frozen=True)
class Filters:
    labels: frozenset[str] | None = None  # keep images having ANY of these labels
    split: str | None = None
    exclude_ids: frozenset[int] = field(default_factory=frozenset)
    exclude_sha256: frozenset[str] = field(default_factory=frozenset)
    # Sorted int64 ids passing ``labels``/``split`` (the database's answer), for stores that restrict a search to
    # given ids (FAISS); None: not resolved. Not part of equality: it is derived from the fields above.
    allowed: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.labels or self.split is not None or self.exclude_ids or self.exclude_sha256)

    def keep(self, record: ImageRecord) -> bool:
        return (
            (self.split is None or record.split == self.split)
            and (not self.labels or not self.labels.isdisjoint(record.labels))
            and record.id not in self.exclude_ids
            and record.sha256 not in self.exclude_sha256
        )


def unit_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """``[Q, dim]`` (or one ``[dim]``) float32 queries, L2-normalised: what every index search takes."""
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[1] != dim:
        raise CollectionError(f"queries must be [Q, {dim}], got {list(q.shape)}")
    return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)


def filtered_search(
    search: SearchFn,
    get_many: GetMany,
    queries: np.ndarray,
    k: int,
    filters: Filters,
    *,
    pushdown: bool = False,
    unapplied: int = 0,
) -> list[list[Hit]]:
    """``pushdown``: ``search`` applies the filters itself (Milvus scalar filters, FAISS selectors), so it is asked
    for k and returns fewer only when fewer rows pass; it is asked again for more only for rows deleted by a
    concurrent write. ``unapplied``: how many excluded rows the store may still return (FAISS knows no sha256),
    asked for on top of k."""
    over_fetch = filters.active and not pushdown
    excluded = len(filters.exclude_ids) + len(filters.exclude_sha256)
    fetch = k * 4 + excluded if over_fetch else k + unapplied
    results: list[list[Hit]] = [[] for _ in range(len(queries))]
    pending = list(range(len(queries)))
    while pending:
        scores, ids, total = search(queries[pending], fetch)
        records = get_many(int(i) for i in ids.reshape(-1) if i >= 0)
        still = []
        for row, qi in enumerate(pending):
            hits = [
                Hit(int(i), float(s), records[int(i)])
                for s, i in zip(scores[row], ids[row], strict=True)
                if i >= 0 and int(i) in records and filters.keep(records[int(i)])
            ]
            exhausted = fetch >= total or (pushdown and int((ids[row] >= 0).sum()) < fetch)
            if len(hits) >= k or exhausted:
                results[qi] = hits[:k]
            else:
                still.append(qi)
        pending = still
        fetch *= 4
    return results


# ids [M] (no -1) -> stored vectors [M, D]
Reconstruct = Callable[[np.ndarray], np.ndarray]


def reranked_search(
    search: SearchFn,
    search_all: SearchFn,
    reconstruct: Reconstruct,
    get_many: GetMany,
    queries: np.ndarray,
    k: int,
    filters: Filters,
    rerank: RerankConfig,
    pushdown: bool = False,
    unapplied: int = 0,
) -> list[list[Hit]]:
    """:func:`filtered_search` with re-ranking (:mod:`msir_core.retrieval.rerank`, the code msir-eval measures).

    αQE: the expanded queries (over their nearest stored vectors, filters not applied: the expansion describes
    the query, not the answer) are searched with the filters. DBA / k-reciprocal: the top ``shortlist`` filtered
    hits are re-ordered (DBA augments each from its nearest stored vectors) and the best ``k`` returned.
    ``search`` is the filtered search (as for :func:`filtered_search`, with ``pushdown``), ``search_all`` the
    unfiltered one the neighbour look-ups use. A hit's ``score`` is then the re-ranking's score: cosine to the
    expanded query (αQE), cosine to the augmented vector (DBA), ``-(final k-reciprocal distance)`` (k-reciprocal);
    higher is better in every case.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))

    def neighbours(vectors: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, ids, _ = search_all(vectors.numpy(), n)
        ids = np.asarray(ids)
        valid = ids >= 0  # fewer stored vectors than n: padded slots get weight 0 and a zero vector
        found = np.zeros((*ids.shape, q.shape[1]), dtype=np.float32)
        if valid.any():
            found[valid] = reconstruct(ids[valid])
        sims = np.where(valid, scores, 0.0).astype(np.float32)
        return torch.from_numpy(sims), F.normalize(torch.from_numpy(found), dim=2)

    if rerank.method == "aqe":
        expanded = expand_queries(q, neighbours, rerank).numpy()
        return filtered_search(search, get_many, expanded, k, filters, pushdown=pushdown, unapplied=unapplied)
    shortlist = max(k, rerank.shortlist)
    found = filtered_search(search, get_many, queries, shortlist, filters, pushdown=pushdown, unapplied=unapplied)
    results: list[list[Hit]] = []
    for row, hits in enumerate(found):
        if len(hits) < 2:
            results.append(hits[:k])
            continue
        ids = np.array([h.id for h in hits], dtype=np.int64)
        vectors = F.normalize(torch.from_numpy(np.asarray(reconstruct(ids), dtype=np.float32)), dim=1)
        scores = torch.tensor([[h.score for h in hits]], dtype=torch.float32)
        order, new = rerank_shortlist(q[row : row + 1], scores, vectors.unsqueeze(0), rerank, neighbours)
        results.append([replace(hits[int(i)], score=float(s)) for i, s in zip(order[0][:k], new[0][:k], strict=True)])
    return results
