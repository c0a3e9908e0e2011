"""Filtered k-NN over the vector store: over-fetch, filter on database rows, grow until k hits or exhausted.

Filters (labels, split, excluded ids / sha256) live in the database, not in FAISS, so a search asks the index for
more candidates than needed (``4k`` plus the excluded count), drops the rows that do not pass, and asks again
with four times as many until every query has ``k`` hits or the whole index has been ranked. Candidates whose row
has just been deleted by a concurrent write are dropped the same way. One mechanism for every FAISS index type
(an ``IDSelector`` would only help the flat index, and only for id exclusions). A store that applies the filters
itself (Milvus: scalar filters, ``pushdown``) is asked for exactly k; the rows are still read and checked here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from indexer.records import Hit, ImageRecord

# (queries, k) -> (scores [Q, k], ids [Q, k], number of vectors in the index)
SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, int]]
GetMany = Callable[[Iterable[int]], dict[int, ImageRecord]]


@dataclass(frozen=True)
class Filters:
    labels: frozenset[str] | None = None  # keep images having ANY of these labels
    split: str | None = None
    exclude_ids: frozenset[int] = field(default_factory=frozenset)
    exclude_sha256: frozenset[str] = field(default_factory=frozenset)

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


def filtered_search(
    search: SearchFn, get_many: GetMany, queries: np.ndarray, k: int, filters: Filters, *, pushdown: bool = False
) -> list[list[Hit]]:
    """``pushdown``: ``search`` applies the filters itself (Milvus scalar filters), so it is asked for k and returns
    fewer only when fewer rows pass; it is asked again for more only for rows deleted by a concurrent write."""
    over_fetch = filters.active and not pushdown
    fetch = k * 4 + len(filters.exclude_ids) + len(filters.exclude_sha256) if over_fetch else k
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
