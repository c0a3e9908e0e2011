"""Metadata database: migrations, refusals, SQLite settings, connection failures, concurrent readers."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from indexer import Collection, CollectionError, DatabaseUnavailable, Embedder
from indexer.duplicates import backfill_copy_descriptors, stored_groups
from indexer.ingest.sources import from_folder
from indexer.metadata.queries import MetadataStore
from indexer.metadata.tables import Base, current_revision, head_revision, make_engine, migrate
from models import copy_descriptor, open_image
from tests.indexer.conftest import write_images


def test_migrations_match_the_orm_and_refuse_newer_schemas(tmp_path: Path, database_url: str | None) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    assert migrate(engine) == head_revision()
    assert migrate(engine) == head_revision()  # idempotent
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diffs == []
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(CollectionError, match="newer than this msir"):
        migrate(engine)
    engine.dispose()


def test_migration_0004_adds_copy_descriptors_that_older_rows_get_from_their_files(
    tmp_path: Path, checkpoint: Path, database_url: str | None
) -> None:
    paths = write_images(tmp_path / "imgs", 5)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, database_url, device="cpu") as col:
        col.add_source(from_folder(tmp_path / "imgs"))
        on_add = {int(i): v for ids, x in col.store.iter_copy_descriptors() for i, v in zip(ids, x, strict=True)}
        by_name = {Path(r.uri).name: r.id for r in col.get_many(col.store.ids().tolist()).values()}
    assert len(on_add) == 5
    for name, image_id in by_name.items():  # computed where the image was decoded, as from its file
        from_file = copy_descriptor.copy_descriptor(open_image(paths[0].parent / name))
        np.testing.assert_allclose(on_add[image_id], from_file, atol=1e-5)
    # As revision 0003 left the database: no copy_descriptor column.
    engine = make_engine(database_url or f"sqlite:///{directory / 'metadata.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE images DROP COLUMN copy_descriptor"))
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0003'"))
    with Collection.open(directory, database_url=database_url, device="cpu") as col:  # migrates
        assert current_revision(engine) == head_revision() == "0004"
        assert list(col.store.iter_copy_descriptors()) == []
        assert stored_groups(col.store, 0.5).vectors == 0  # rows without a descriptor are in no group
        paths[2].unlink()
        report = backfill_copy_descriptors(col.store, col.directory)
        assert report.filled == 4 and [i for i, _ in report.skipped] == [by_name[paths[2].name]]
        filled = {int(i): v for ids, x in col.store.iter_copy_descriptors() for i, v in zip(ids, x, strict=True)}
        assert sorted(filled) == sorted(i for i in on_add if i != by_name[paths[2].name])
        for image_id, vector in filled.items():
            np.testing.assert_allclose(vector, on_add[image_id], atol=1e-5)
        assert backfill_copy_descriptors(col.store, col.directory).filled == 0
    engine.dispose()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_unreachable_database_raises_database_unavailable(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(DatabaseUnavailable, match="unavailable"):
        MetadataStore(dead).ping()
    with pytest.raises(DatabaseUnavailable):
        Collection.create(tmp_path / "dead", checkpoint, dead, device="cpu")
    write_images(tmp_path / "imgs", 3)
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        col.add_source(from_folder(tmp_path / "imgs"))
        query = col.vector(1)[None]
        live = col.store.engine
        monkeypatch.setattr(col.store, "engine", make_engine(dead))
        monkeypatch.setattr(col.store, "_sessions", sa.orm.sessionmaker(col.store.engine))
        with pytest.raises(DatabaseUnavailable):
            col.ping()
        with pytest.raises(DatabaseUnavailable):
            col.search(query, 2)
        monkeypatch.undo()
        assert col.store.engine is live
        col.ping()


def test_readers_never_see_half_applied_writes(tmp_path: Path, checkpoint: Path) -> None:
    paths = write_images(tmp_path / "imgs", 60)
    for i, path in enumerate(paths):
        (tmp_path / f"batch{i % 6}").mkdir(exist_ok=True)
        path.rename(tmp_path / f"batch{i % 6}" / path.name)
    errors: list[BaseException] = []
    stop = threading.Event()
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        col.add_source(from_folder(tmp_path / "batch0"))
        query = col.vector(1)[None]

        def reader() -> None:
            seen = 0
            try:
                while not stop.is_set():
                    hits = col.search(query, 100)[0]
                    assert all(h.record.id == h.id for h in hits)
                    assert len(hits) >= seen  # rows are only added: a reader never goes back in time
                    seen = len(hits)
            except BaseException as error:  # surfaced in the main thread
                errors.append(error)

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        for b in range(1, 6):
            col.add_source(from_folder(tmp_path / f"batch{b}"), batch_size=3)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        col.remove([1, 2])
        assert col.ntotal == 58 and col.verify().ok


def test_embedder_outputs_and_device_check(checkpoint: Path, tmp_path: Path) -> None:
    embedder = Embedder(checkpoint, "cpu")
    images = [open_image(p) for p in write_images(tmp_path, 4)]
    result = embedder.embed_images(images)
    assert result.embeddings.shape == (4, embedder.dim) and result.embeddings.dtype == np.float32
    assert result.logits.shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, rtol=1e-5)
    assert embedder.embed_images([]).embeddings.shape == (0, embedder.dim)
    with pytest.raises(ValueError, match="shape"):
        embedder.embed_uint8(np.zeros((1, 3, 8, 8), np.uint8))
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(CollectionError, match="no CUDA GPU"):
            Embedder(checkpoint, "cuda")


@pytest.mark.cuda
def test_cuda_bf16_embeddings_agree_with_cpu(checkpoint: Path, tmp_path: Path) -> None:
    images = [open_image(p) for p in write_images(tmp_path, 8)]
    cpu = Embedder(checkpoint, "cpu").embed_images(images).embeddings
    gpu = Embedder(checkpoint, "cuda").embed_images(images).embeddings
    assert np.min(np.sum(cpu * gpu, axis=1)) > 0.99  # bf16 autocast: same directions
