"""Collection lifecycle on SQLite and PostgreSQL: build, add, dedup, remove, rebuild, verify, refusals."""

from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from indexer import Collection, CollectionError, ConsistencyError, NewImage
from indexer.ingest.sources import from_dataset, from_folder
from tests.fixtures_formats import write_not_an_image, write_truncated_jpeg
from tests.indexer.backends import drop_saved_vectors
from tests.indexer.conftest import CLASSES, write_images, write_labelled_folder


def _engine(col: Collection) -> sa.Engine:
    return col.store.engine


@pytest.mark.parametrize(
    ("backend", "index_type"),
    # milvus-lite builds FLAT and HNSW indexes (no IVF_PQ: test_milvus_store checks the refusal).
    [("faiss", "flat"), ("faiss", "hnsw"), ("faiss", "ivfpq"), ("milvus", "flat"), ("milvus", "hnsw")]
    + [pytest.param("milvus-server", kind, marks=pytest.mark.milvus_server) for kind in ("flat", "hnsw")],
    indirect=["backend"],
)
def test_build_add_dedup_remove_rebuild(
    tmp_path: Path, checkpoint: Path, database_url: str | None, backend: str, index_type: str
) -> None:
    images = write_images(tmp_path / "imgs", 40)
    shutil.copy(images[0], tmp_path / "imgs" / "copy_of_0.png")  # same bytes, other name
    options = {"train_size": 30, "m": 8, "nbits": 4} if index_type == "ivfpq" else None
    col = Collection.create(tmp_path / "col", checkpoint, database_url, index_type, options, "cpu", backend=backend)
    with col:
        report = col.add_source(from_folder(tmp_path / "imgs"), batch_size=8)
        assert len(report.added) == 40
        # ivfpq trains once, after the bulk load, on all 40 vectors (not on the first 30).
        assert col.stats()["index"].get("trained", True) and col.stats()["index"].get("nlist", 1) == 1
        ((dup_uri, dup_of),) = report.duplicates
        assert Path(dup_uri).name in ("copy_of_0.png", "img0000.png")
        assert col.get(dup_of).sha256 == hashlib.sha256(images[0].read_bytes()).hexdigest()
        assert col.ntotal == col.store.count() == 40

        # The stored vector of an image finds that image first, with cosine 1.
        first = report.added[0]
        hit = col.search(col.vector(first)[None], 5)[0][0]
        assert hit.id == first and hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.record.sha256 == col.get(first).sha256

        # Adding the same files again: every one is reported as a duplicate, nothing indexed twice.
        again = col.add_images([NewImage(p, labels=["red"]) for p in images[:5]])
        assert again.added == [] and len(again.duplicates) == 5
        new = write_images(tmp_path / "more", 3, seed=7, prefix="new")
        added = col.add_images([NewImage(new[0], labels=["green"], split="train", metadata={"k": 1})])
        record = col.get(added.added[0])
        assert record.labels == ["green"] and record.split == "train" and record.metadata == {"k": 1}
        assert record.width == record.height == 16 and record.added_at.tzinfo is not None

        gone = report.added[:3]
        assert col.remove([*gone, 10_000]) == 3
        assert col.get(gone[0]) is None and col.ntotal == col.store.count() == 38
        assert all(h.id not in gone for h in col.search(col.vector(report.added[3])[None], 38)[0])
        assert col.remove_paths([images[5]]) == 1
        assert col.verify().ok

        before = col.search(col.vector(report.added[10])[None], 10)[0]
        col.rebuild()
        after = col.search(col.vector(report.added[10])[None], 10)[0]
        assert [h.id for h in before] == [h.id for h in after]
        assert col.verify().ok
    # Ids are never reused after a removal (they are FAISS ids).
    with Collection.open(tmp_path / "col", database_url=database_url, device="cpu") as col:
        more = col.add_images([NewImage(new[1])])
        assert more.added[0] > max(added.added)
        assert col.verify().ok


def test_filters_and_dataset_labels(tmp_path: Path, checkpoint: Path, database_url: str | None, backend: str) -> None:
    root = write_labelled_folder(tmp_path / "data", 6)
    with Collection.create(tmp_path / "col", checkpoint, database_url, device="cpu", backend=backend) as col:
        report = col.add_source(from_dataset(root, "imagefolder"), batch_size=16)
        assert len(report.added) == 36
        query = col.vector(report.added[0])[None]
        for hit in col.search(query, 5, labels=["blue"])[0]:
            assert hit.record.labels == ["blue"]
        hits = col.search(query, 50, split="test")[0]
        assert len(hits) == 18 and {h.record.split for h in hits} == {"test"}
        top = col.search(query, 3)[0]
        excluded = col.search(query, 3, exclude_ids={top[0].id}, exclude_sha256={top[1].record.sha256})[0]
        assert {top[0].id, top[1].id}.isdisjoint(h.id for h in excluded) and len(excluded) == 3
        # A label filter combined with exclusions: k hits, all passing, none excluded.
        blue = col.search(query, 4, labels=["blue"])[0]
        rest = col.search(query, 4, labels=["blue"], exclude_ids={blue[0].id}, exclude_sha256={blue[1].record.sha256})
        assert len(rest[0]) == 4 and {blue[0].id, blue[1].id}.isdisjoint(h.id for h in rest[0])
        assert all(h.record.labels == ["blue"] for h in rest[0])
        # The ids a filter lets through are cached per filter until the change feed moves: a relabel shows at once.
        col.edit([top[0].id], labels=["violet"])
        assert [h.id for h in col.search(query, 5, labels=["violet"])[0]] == [top[0].id]
        col.edit([top[0].id], labels=top[0].record.labels)
        # Paging counts the matching rows once per filter until the feed moves, not once per page.
        counted: list[object] = []
        count = col.store.count_matching
        col.store.count_matching = lambda *a: counted.append(a) or count(*a)  # type: ignore[method-assign]
        first, total = col.list_images(limit=5, labels=["blue"])
        second, again = col.list_images(after=first[-1].id, limit=5, labels=["blue"])
        assert total == again == 12 and len(counted) == 1 and first[-1].id < second[0].id
        col.edit([first[0].id], labels=["violet"])  # moves the feed: the next page counts again
        assert col.list_images(after=first[-1].id, limit=5, labels=["blue"])[1] == 11 and len(counted) == 2
        col.edit([first[0].id], labels=["blue"])
        del col.store.count_matching
        stats = col.stats()
        assert stats["rows"] == 36 and stats["splits"] == {"train": 18, "test": 18}
        assert stats["labels"] == {name: 12 for name in CLASSES}


def test_corrupt_files_are_skipped_and_reported(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "imgs", 6)
    write_not_an_image(tmp_path / "imgs" / "text.png")
    write_truncated_jpeg(tmp_path / "imgs" / "cut.jpg")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        report = col.add_source(from_folder(tmp_path / "imgs"), batch_size=4, workers=1)
        assert len(report.added) == 6 and len(report.failed) == 3
        assert report.report_path is not None and report.report_path.parent == tmp_path / "col" / "reports"
        with report.report_path.open() as fh:
            rows = list(csv.DictReader(fh))
        assert {Path(r["source"]).name for r in rows} == {"text.png", "cut.jpg", "empty.png"}
        assert all(r["status"] == "failed" and r["reason"] for r in rows)
        assert col.verify().ok


def test_verify_finds_orphan_and_missing_rows(
    tmp_path: Path, checkpoint: Path, database_url: str | None, backend: str
) -> None:
    write_images(tmp_path / "imgs", 12)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, database_url, device="cpu", backend=backend) as col:
        ids = col.add_source(from_folder(tmp_path / "imgs")).added
    # Orphan row: a vector vanishes from the saved index (a row in the middle, so it is not "lagging").
    drop_saved_vectors(directory, [ids[3]])
    with pytest.raises(ConsistencyError, match=r"orphan rows.*msir-index rebuild"):
        Collection.open(directory, database_url=database_url, device="cpu")
    with Collection.open(directory, database_url=database_url, device="cpu", strict=False) as col:
        report = col.verify()
        assert not report.ok and report.details["orphan_rows"] == [ids[3]]
        # Missing row: an index id whose database row was deleted behind the collection's back.
        with _engine(col).begin() as conn:
            conn.execute(sa.text("DELETE FROM images WHERE id = :id"), {"id": ids[7]})
        report = col.verify()
        assert report.details["missing_rows"] == [ids[7]]
        assert any(p.startswith("missing rows") for p in report.problems)
        col.rebuild()
        assert col.verify().ok and col.ntotal == 11
    with Collection.open(directory, database_url=database_url, device="cpu") as col:
        assert col.verify().ok


def test_foreign_checkpoint_and_wrong_database_refused(
    tmp_path: Path, checkpoint: Path, other_checkpoint: Path, backend: str
) -> None:
    write_images(tmp_path / "imgs", 4)
    with Collection.create(tmp_path / "col", checkpoint, device="cpu", backend=backend) as col:
        col.add_source(from_folder(tmp_path / "imgs"))
    with pytest.raises(ConsistencyError, match="checkpoint mismatch"):
        Collection.open(tmp_path / "col", other_checkpoint, device="cpu")
    with pytest.raises(CollectionError, match="already a collection"):
        Collection.create(tmp_path / "col", checkpoint, device="cpu")
    # A second collection's database paired with the first folder.
    with Collection.create(tmp_path / "col2", checkpoint, device="cpu", backend=backend):
        pass
    with pytest.raises(ConsistencyError, match="database mismatch"):
        Collection.open(tmp_path / "col", database_url=f"sqlite:///{tmp_path / 'col2' / 'metadata.db'}")


def test_lagging_index_is_caught_up_from_the_database(tmp_path: Path, checkpoint: Path, backend: str) -> None:
    write_images(tmp_path / "imgs", 10)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu", backend=backend) as col:
        ids = col.add_source(from_folder(tmp_path / "imgs")).added
    # As after a kill between two index saves: rows in the database, the newest ones not in the index yet.
    drop_saved_vectors(directory, ids[6:])
    with Collection.open(directory, device="cpu") as col:
        assert col.ntotal == 10 and col.verify().ok


def test_store_upload_is_content_addressed(tmp_path: Path, checkpoint: Path) -> None:
    data = write_images(tmp_path / "imgs", 1)[0].read_bytes()
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        path = col.store_upload(data, ".PNG")
        assert path.parent.parent == tmp_path / "col" / "uploads" and path.read_bytes() == data
        assert col.store_upload(data, ".png") == path
        for bad in ("../x.png", ".exe", "png"):
            with pytest.raises(CollectionError):
                col.store_upload(data, bad)
        assert col.add_images([NewImage(path)]).added


def test_uploads_not_indexed_or_deleted_leave_no_file_behind(tmp_path: Path, checkpoint: Path) -> None:
    originals = write_images(tmp_path / "imgs", 2)
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        (kept,) = col.add_images([NewImage(originals[0])]).added
        # The same content uploaded again: reported as a duplicate of the stored row, its upload copy removed.
        copy = col.store_upload(originals[0].read_bytes(), ".png")
        report = col.add_images([NewImage(copy)])
        assert report.duplicates == [(str(copy.resolve()), kept)] and not copy.exists()
        # Bytes that are not an image: reported as failed, upload copy removed.
        junk = col.store_upload(b"not an image", ".png")
        assert col.add_images([NewImage(junk)]).failed and not junk.exists()
        # Deleting an uploaded image deletes our copy; the user's own files are never touched.
        upload = col.store_upload(originals[1].read_bytes(), ".png")
        (new_id,) = col.add_images([NewImage(upload)]).added
        assert col.remove([new_id, kept]) == 2
        assert not upload.exists() and originals[0].exists()
        assert col.verify().ok


def test_two_writers_on_one_collection_stay_consistent(tmp_path: Path, checkpoint: Path, backend: str) -> None:
    """Another process (here: another Collection object) changed the database: the index resyncs before a write."""
    write_images(tmp_path / "a", 5, seed=1, prefix="a")
    write_images(tmp_path / "b", 5, seed=2, prefix="b")
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu", backend=backend):
        pass
    first = Collection.open(directory, device="cpu")
    second = Collection.open(directory, device="cpu")
    try:
        added = first.add_source(from_folder(tmp_path / "a")).added
        second.add_source(from_folder(tmp_path / "b"))
        assert second.ntotal == 10  # caught up with the rows the first one wrote
        first.remove(added[:2])
        second.remove([added[2]])
        assert second.ntotal == 7 and second.verify().ok
    finally:
        first.close()
        second.close()
    with Collection.open(directory, device="cpu") as col:
        assert col.ntotal == 7 and col.verify().ok
