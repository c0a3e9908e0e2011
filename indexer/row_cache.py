"""The neighbours' rows between searches, valid while the collection's state stays where it was.

Reading ten rows back for every query (one SQL round trip, then JSON and path parsing per row) cost more than the
FAISS search it follows on a small collection. Every write in any process (add, remove, label or metadata edit,
rebuild) appends to the change feed in the same transaction as the rows, so a cache tagged with a position in the
feed is as fresh as the index copy it serves with (see :meth:`indexer.collection.Collection.search` for the tag):
a tag that moved empties the cache before anything is served from it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

from indexer.records import ImageRecord

# Rows kept: the hot neighbours of repeated and similar queries; bounded because metadata can be large.
ROW_CACHE_SIZE = 4096

Fetch = Callable[[Iterable[int]], dict[int, ImageRecord]]


class RowCache:
    """An LRU of :class:`ImageRecord` by id, emptied whenever the tag it is asked at differs from its own."""

    def __init__(self, fetch: Fetch, capacity: int = ROW_CACHE_SIZE) -> None:
        self._fetch = fetch
        self._capacity = capacity
        self._rows: OrderedDict[int, ImageRecord] = OrderedDict()
        self._head: Hashable = None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, ids: Iterable[int], head: Hashable) -> dict[int, ImageRecord]:
        """The rows of ``ids`` that exist, as of the position tagged ``head`` (taken by the caller before it searched):
        rows read now are at least that new."""
        wanted = [int(i) for i in ids]
        found: dict[int, ImageRecord] = {}
        with self._lock:
            if head != self._head:
                self._rows.clear()
                self._head = head
            for i in wanted:
                record = self._rows.get(i)
                if record is not None:
                    self._rows.move_to_end(i)
                    found[i] = record
        missing = [i for i in wanted if i not in found]
        self.hits += len(found)
        if not missing:
            return found
        self.misses += len(missing)
        fetched = self._fetch(missing)
        found.update(fetched)
        self._keep(fetched, head)
        return found

    @property
    def capacity(self) -> int:
        return self._capacity

    def prefill(self, rows: dict[int, ImageRecord], head: Hashable) -> None:
        """Keep ``rows``, read at (or after) the position tagged ``head``, taken before they were read."""
        with self._lock:
            if self._head is None:
                self._head = head
        self._keep(rows, head)

    def _keep(self, rows: dict[int, ImageRecord], head: Hashable) -> None:
        with self._lock:
            # Kept only while the cache is still at that tag, so that a write committed meanwhile (a newer tag seen
            # by another search) is never undone by rows read before it.
            if self._head == head:
                self._rows.update(rows)
                while len(self._rows) > self._capacity:
                    self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._head = None
