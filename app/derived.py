"""Views computed from the whole collection (duplicate groups, the 2-D map): once per index position, not per
request.

A value is cached under the index copy's position, ``(generation, seq)``: a rebuild starts a new generation, every
committed add, delete or edit (here or in another process, once followed) moves ``seq``, and the next request after
either computes the value again. Concurrent requests for a missing value wait for one computation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import numpy as np

from indexer import Hit
from indexer.duplicates import DuplicateGroups, collapse, stored_groups
from msir_core.retrieval.projection import pca_2d
from msir_schemas.api import CollectionMap, MapPoint

if TYPE_CHECKING:
    from app.service import Service

T = TypeVar("T")
# Values kept: the default duplicate groups, the map, and a few other thresholds a reviewer tries.
CACHE_SIZE = 6


class DerivedCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._values: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = anyio.Lock()
        self._size = size
        self.computed = 0  # computations so far (tests check that a repeated request reuses the value)

    async def get(
        self,
        position: tuple[int, int],
        key: Hashable,
        compute: Callable[[], Awaitable[T]],
    ) -> T:
        full = (*position, key)
        async with self._lock:
            if full in self._values:
                self._values.move_to_end(full)
                return self._values[full]  # type: ignore[no-any-return]
            value = await compute()
            self.computed += 1
            self._values[full] = value
            # Values of an older position are never asked for again: drop them at once (memory), then the LRU.
            for old in [k for k in self._values if k[:2] != position]:
                del self._values[old]
            while len(self._values) > self._size:
                self._values.popitem(last=False)
            return value


async def duplicate_groups(service: Service, threshold: float | None = None) -> DuplicateGroups:
    """The collection's near-duplicate groups at ``threshold`` (default MSIR_DUPLICATE_THRESHOLD), cached."""
    value = service.settings.duplicate_threshold if threshold is None else float(threshold)
    col = service.collection
    return await service.derived.get(
        (col.generation, col.seq), ("duplicates", value), lambda: service.blocking(stored_groups, col.store, value)
    )


# Collapsing keeps one hit per group: this many times k are fetched so that k distinct groups usually remain.
COLLAPSE_FETCH = 4


async def collapse_hits(service: Service, hits: list[Hit], k: int) -> list[Hit]:
    """The best hit of each near-duplicate group (groups at MSIR_DUPLICATE_THRESHOLD), at most ``k``."""
    groups = await duplicate_groups(service)
    return collapse(hits, groups.group_of, k)


# The map's sample is drawn with this seed: the same collection state always gives the same points.
MAP_SEED = 0


def _compute_map(service: Service, position: tuple[int, int]) -> CollectionMap:
    store = service.collection.store
    ids = store.ids()
    limit = service.settings.map_max_points
    sampled = len(ids) > limit
    if sampled:
        ids = np.sort(np.random.default_rng(MAP_SEED).choice(ids, size=limit, replace=False))
    parts = list(store.iter_embeddings(ids=ids.tolist()))
    found = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 2), np.float32)
    coords, explained = pca_2d(vectors)
    records = store.get_many(found.tolist())
    points = [
        MapPoint(
            id=int(i),
            x=round(float(x), 5),
            y=round(float(y), 5),
            label=records[int(i)].labels[0] if int(i) in records and records[int(i)].labels else None,
        )
        for i, (x, y) in zip(found.tolist(), coords.tolist(), strict=True)
        if int(i) in records
    ]
    return CollectionMap(
        method="pca",
        explained_variance=[round(float(v), 5) for v in explained],
        total=len(store.ids()) if sampled else len(ids),
        sampled=sampled,
        generation=position[0],
        seq=position[1],
        points=points,
    )


async def collection_map(service: Service) -> CollectionMap:
    """The 2-D map of the collection (:func:`msir_core.retrieval.projection.pca_2d`), cached per index position."""
    col = service.collection
    position = (col.generation, col.seq)
    return await service.derived.get(position, "map", lambda: service.blocking(_compute_map, service, position))
