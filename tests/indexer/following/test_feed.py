"""Index copies follow the database's change feed: incrementally, idempotently, and never reverting a rebuild.

Two ``Collection`` objects on one folder stand for two processes (each holds its own index copy and locks the
folder like another process would)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexer import Collection, NewImage
from indexer.manifest import Manifest
from tests.indexer.conftest import write_images


def _top(col: Collection, image_id: int) -> int:
    return col.search(col.vector(image_id)[None], 1)[0][0].id


def test_a_copy_follows_adds_removes_edits_and_rebuilds(
    tmp_path: Path, checkpoint: Path, database_url: str | None
) -> None:
    images = write_images(tmp_path / "imgs", 12)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, database_url, device="cpu") as col:
        base = col.add_images([NewImage(p) for p in images[:6]]).added
    writer = Collection.open(directory, database_url=database_url, device="cpu")
    reader = Collection.open(directory, database_url=database_url, device="cpu")
    try:
        assert reader.refresh() is False  # nothing changed: one max(seq) lookup, no work
        added = writer.add_images([NewImage(p) for p in images[6:]]).added
        assert reader.ntotal == 6 and reader.sync_state(reader.store.head())["lag"] > 0
        assert reader.refresh() is True
        assert reader.ntotal == 12 and all(_top(reader, i) == i for i in added)
        assert reader.sync_state(reader.store.head())["lag"] == 0

        assert writer.remove([base[0], added[0]]) == 2
        reader.refresh()
        hits = {h.id for h in reader.search(reader.vector(base[1])[None], 12)[0]}
        assert reader.ntotal == 10 and not {base[0], added[0]} & hits

        # An edit moves the feed, not the index: the copy's position follows, labels come from the database.
        writer.edit([base[1]], labels=["boat"])
        assert reader.refresh() is True and reader.ntotal == 10
        assert [h.id for h in reader.search(reader.vector(base[1])[None], 3, labels=["boat"])[0]] == [base[1]]

        # A rebuild to hnsw elsewhere is adopted: generation and type.
        generation = reader.generation
        writer.set_index_type("hnsw")
        writer.rebuild()
        assert writer.generation > generation
        reader.refresh()
        assert reader.index_type == "hnsw" and reader.generation == writer.generation and reader.ntotal == 10
        # A removal made elsewhere reaches an hnsw copy too, as a tombstone: neither process rebuilds its graph.
        writer_graph, reader_graph = writer._index.main, reader._index.main
        writer.remove([base[2]])
        reader.refresh()
        assert reader.ntotal == 9 and base[2] not in reader.store.ids()
        assert writer._index.main is writer_graph and reader._index.main is reader_graph
        assert reader._index.deleted.tolist() == [base[2]]
        assert base[2] not in {h.id for h in reader.search(reader.vector(base[3])[None], 10)[0]}
    finally:
        writer.close()
        reader.close()
    with Collection.open(directory, database_url=database_url, device="cpu") as col:
        assert col.index_type == "hnsw" and col.ntotal == 9 and col.verify().ok


def test_a_stale_copy_never_saves_over_a_newer_generation(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 6)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        col.add_images([NewImage(p) for p in images[:4]])
    stale = Collection.open(directory, device="cpu")
    try:
        with Collection.open(directory, device="cpu") as other:
            other.set_index_type("hnsw")
            other.rebuild()
        rebuilt = Manifest.load(directory)
        # The stale copy's pending save (its generation is older) leaves the newer files alone...
        stale._dirty = True
        with stale._write_lock():
            stale._save()
        assert Manifest.load(directory).position() == rebuilt.position()
        assert Manifest.load(directory).index.type == "hnsw"
        # ...and its next write adopts the new generation first, then saves it.
        stale.add_images([NewImage(images[4])])
        assert stale.index_type == "hnsw"
    finally:
        stale.close()
    saved = Manifest.load(directory)
    assert saved.index.type == "hnsw" and saved.generation == rebuilt.generation and saved.row_count == 5


@pytest.mark.parametrize("interval_s", [0.05])
def test_background_following(tmp_path: Path, checkpoint: Path, interval_s: float) -> None:
    images = write_images(tmp_path / "imgs", 4)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu"):
        pass
    with Collection.open(directory, device="cpu") as server, Collection.open(directory, device="cpu") as cli:
        server.start_following(interval_s)
        (new_id,) = cli.add_images([NewImage(images[0])]).added
        deadline = time.monotonic() + 5
        # The vectors land before the copy records its new position: wait for both.
        while (server.ntotal != 1 or server.sync_state()["lag"] != 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.ntotal == 1 and _top(server, new_id) == new_id
        state = server.sync_state()
        assert state["following"] and state["error"] is None and state["lag"] == 0
        server.stop_following()
        assert not server.sync_state()["following"]


def test_the_feed_is_pruned_and_a_copy_behind_it_reloads(
    tmp_path: Path, checkpoint: Path, database_url: str | None
) -> None:
    images = write_images(tmp_path / "imgs", 12)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, database_url, device="cpu") as col:
        base = col.add_images([NewImage(p) for p in images[:4]]).added
    old_files = {name: (directory / name).read_bytes() for name in ("index.faiss", "manifest.json")}
    writer = Collection.open(directory, database_url=database_url, device="cpu")
    reader = Collection.open(directory, database_url=database_url, device="cpu")
    try:
        writer.feed_keep = 2
        old_seq = reader.seq
        added: list[int] = []
        for path in images[4:10]:  # one change per add; every add saves, and the save prunes
            added += writer.add_images([NewImage(path)]).added
        assert writer.remove([base[0]]) == 1
        pruned = writer.store.pruned_through()
        assert pruned > old_seq  # the reader's position is gone from the feed
        assert len(writer.store.changes_since(0)) <= 2 + 2 // 10 + 1  # bounded by feed_keep (+ the slack)
        assert writer.store.head() > pruned  # the newest change always stays: head never moves back
        # The reader cannot follow the feed from its position: it reloads the writer's saved files (at a position
        # the kept feed still covers) and follows from there, ending where the database is.
        assert reader.refresh() is True
        assert reader.seq == writer.store.head() and reader.ntotal == 9
        assert sorted(reader._index.ids().tolist()) == sorted(reader.store.ids().tolist())
        assert all(_top(reader, i) == i for i in added)
    finally:
        writer.close()
        reader.close()
    # Saved files from behind the horizon (the 4-row index from before, restored): the open cannot follow the feed
    # from their position and rebuilds from the database (following the kept feed alone would miss 5 adds).
    for name, content in old_files.items():
        (directory / name).write_bytes(content)
    with Collection.open(directory, database_url=database_url, device="cpu") as col:
        assert col.ntotal == 9 and col.seq >= col.store.pruned_through() and col.verify().ok
