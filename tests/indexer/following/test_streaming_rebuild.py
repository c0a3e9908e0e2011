"""An index built from the database streams its rows: one query read through a server-side cursor, handed to the
index ``scan_batch`` rows at a time (memory beyond the index holds one batch), on SQLite and PostgreSQL; an IVF-PQ
index trains on a view of its exact store and is filled in slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from indexer import Collection, NewImage
from indexer.vectors import faiss_index
from indexer.vectors.faiss_store import FaissStore
from tests.indexer.conftest import write_images

ROWS = 23


def _scans(engine: sa.Engine) -> list[str]:
    """Cursor class of every statement reading the embeddings column (recorded as it runs)."""
    found: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "embedding" in statement and "FROM images" in statement:
            found.append(type(cursor).__name__)

    sa.event.listen(engine, "before_cursor_execute", record)
    return found


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_rebuild_reads_one_cursor_in_batches(
    tmp_path: Path, checkpoint: Path, database_url: str | None, index_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_images(tmp_path / "imgs", ROWS)
    options = {"train_size": 8, "nlist": 2, "m": 4, "nbits": 2} if index_type == "ivfpq" else None
    with Collection.create(tmp_path / "col", checkpoint, database_url, index_type, options, device="cpu") as col:
        ids = col.add_images([NewImage(p) for p in images]).added
        before = [[h.id for h in hits] for hits in col.search(_queries(col, ids), 4)]
        batches: list[int] = []
        add = FaissStore.add

        def counting_add(self: FaissStore, ids: Any, vectors: np.ndarray, **kw: Any) -> None:
            batches.append(len(ids))
            add(self, ids, vectors, **kw)

        monkeypatch.setattr(FaissStore, "add", counting_add)
        monkeypatch.setattr(faiss_index, "TRAIN_ADD_SLICE", 5)  # the post-training fill in slices too
        scans = _scans(col.store.engine)
        col.scan_batch = 5
        col.rebuild()
        assert batches == [5, 5, 5, 5, 3]  # ceil(23 / 5) fetches, none larger than the batch
        assert len(scans) == 1  # one query, not a query per page
        if database_url is not None:
            assert scans == ["ServerCursor"]  # psycopg streams: PostgreSQL sends rows as they are fetched
        after = [[h.id for h in hits] for hits in col.search(_queries(col, ids), 4)]
        assert col.ntotal == ROWS and after == before
        if index_type == "ivfpq":
            assert col.stats()["index"]["trained"] is True


def _queries(col: Collection, ids: list[int]) -> np.ndarray:
    found = col.store.vectors(ids[:5])
    return np.stack([found[i] for i in ids[:5]])


def test_a_batch_of_zero_rows_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col, pytest.raises(ValueError, match="batch"):
        next(col.store.iter_embeddings(batch=0))


def test_cli_rebuild_does_not_catch_up_first(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows loaded behind the index's back (a bulk load into the database) are read once, by the rebuild."""
    from typer.testing import CliRunner

    from indexer.cli import app
    from indexer.following.feed import FollowingIndex

    images = write_images(tmp_path / "imgs", 6)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        empty = (directory / "index.faiss").read_bytes()
        col.add_images([NewImage(p) for p in images])
    (directory / "index.faiss").write_bytes(empty)  # the index lags every row, as after a bulk load
    with Collection.open(directory, device="cpu", strict=False, catch_up=False) as col:
        assert col.ntotal == 0  # the lag is real: an ordinary open would catch it up first

    def no_catch_up(self: FollowingIndex) -> list[str]:
        raise AssertionError("rebuild caught the index up before rebuilding it")

    monkeypatch.setattr(FollowingIndex, "_catch_up", no_catch_up)
    result = CliRunner().invoke(app, ["rebuild", str(directory), "--scan-batch", "4"])
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    with Collection.open(directory, device="cpu") as col:
        assert col.ntotal == 6 and not col.problems
