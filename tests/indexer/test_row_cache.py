"""The neighbours' rows cached between searches (indexer.row_cache): served without SQL while the change feed's
follower confirms nothing moved, never stale after an own write, a write elsewhere the follower saw, or an outage."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from indexer import Collection, CollectionError, NewImage
from indexer.row_cache import RowCache
from tests.indexer.conftest import write_images


def test_row_cache_serves_a_tag_and_empties_when_it_moves() -> None:
    fetched: list[list[int]] = []

    def fetch(ids):  # type: ignore[no-untyped-def]
        ids = list(ids)
        fetched.append(ids)
        return {i: f"row{i}@{len(fetched)}" for i in ids if i != 99}

    cache = RowCache(fetch, capacity=3)  # type: ignore[arg-type]
    assert cache.get_many([1, 2, 99], (5, 0)) == {1: "row1@1", 2: "row2@1"}
    assert cache.get_many([2, 1], (5, 0)) == {1: "row1@1", 2: "row2@1"}  # no fetch: both cached
    assert fetched == [[1, 2, 99]]
    assert cache.get_many([1, 99], (6, 0)) == {1: "row1@2"}  # the tag moved: read again
    assert cache.get_many([3, 4, 5, 6], (6, 0)) and len(cache._rows) == 3  # bounded


def test_prefilled_rows_are_served_at_their_tag_only() -> None:
    cache = RowCache(lambda ids: {i: f"fetched{i}" for i in ids}, capacity=2)  # type: ignore[arg-type, misc]
    cache.prefill({1: "warm1", 2: "warm2", 3: "warm3"}, (5, 0))  # type: ignore[dict-item]
    assert len(cache._rows) == 2  # bounded as any fill
    assert cache.get_many([3], (5, 0)) == {3: "warm3"} and cache.misses == 0
    assert cache.get_many([3], (6, 0)) == {3: "fetched3"}  # the tag moved: read again
    cache.prefill({3: "old3"}, (5, 0))  # type: ignore[dict-item]
    assert cache.get_many([3], (6, 0)) == {3: "fetched3"}  # rows of an older tag are never kept


def _follow(col: Collection) -> None:
    """Follow the change feed and wait until the follower confirmed the head (the rows' cache is then served)."""
    col.start_following(0.05)
    deadline = time.monotonic() + 10
    while col.confirmed_head() is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _collection(tmp_path: Path, checkpoint: Path) -> Collection:
    images = write_images(tmp_path / "images", 12)
    col = Collection.create(tmp_path / "col", checkpoint, device="cpu")
    col.add_images([NewImage(p) for p in images])
    return col


def test_a_followed_search_reads_no_rows_again(tmp_path: Path, checkpoint: Path) -> None:
    col = _collection(tmp_path, checkpoint)
    try:
        _follow(col)
        query = col.vector(1)[None]
        first = col.search(query, 5)[0]
        misses = col._rows.misses
        again = col.search(query, 5)[0]
        assert [h.id for h in again] == [h.id for h in first]
        assert col._rows.misses == misses  # every row from the cache

        # An own edit is seen at once; a delete by another process once the follower saw it.
        col.edit([first[0].id], labels=["edited"])
        assert col.search(query, 5)[0][0].record.labels == ["edited"]
        with Collection.open(tmp_path / "col", device="cpu") as other:
            other.remove([first[1].id])
        deadline = time.monotonic() + 10
        while first[1].id in [h.id for h in col.search(query, 5)[0]] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first[1].id not in [h.id for h in col.search(query, 5)[0]]
    finally:
        col.close()


def test_warmed_rows_answer_the_first_search_without_sql(tmp_path: Path, checkpoint: Path) -> None:
    col = _collection(tmp_path, checkpoint)
    try:
        _follow(col)
        assert col.warm_rows(page=5) == 12  # three pages
        hits = col.search(col.vector(7)[None], 10)[0]
        assert len(hits) == 10 and col._rows.misses == 0
        assert hits[0].record == col.get(hits[0].id)
    finally:
        col.close()


def test_an_unconfirmed_head_is_read_from_the_database(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    col = _collection(tmp_path, checkpoint)
    try:
        query = col.vector(1)[None]
        col.search(query, 3)

        def down() -> int:
            raise CollectionError("database unavailable")

        monkeypatch.setattr(col.store, "head", down)
        # Not followed (or the follower's last check failed): the search reads the head, so it fails as the
        # database does rather than answering from the cache.
        with pytest.raises(CollectionError):
            col.search(query, 3)
        col.sync_error = "down"
        col._follower = object()  # type: ignore[assignment]  # as if following, but its check failed
        try:
            with pytest.raises(CollectionError):
                col.search(query, 3)
        finally:
            col._follower = None
    finally:
        col.close()


def test_rows_cached_at_one_tag_are_not_served_at_another() -> None:
    cache = RowCache(lambda ids: {i: np.int64(i) for i in ids})  # type: ignore[arg-type, misc]
    cache.get_many([1], (1, 0))
    cache.get_many([1], (1, 1))  # an own write: the count moved
    assert cache.misses == 2
