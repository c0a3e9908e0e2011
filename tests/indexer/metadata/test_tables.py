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
from indexer.ingest.sources import from_folder
from indexer.metadata.queries import MetadataStore
from indexer.metadata.tables import Base, head_revision, make_engine, migrate
from models import open_image
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
