"""What only the Milvus backend has: filters pushed down, its own collections and URIs, switching backends.

The lifecycle, refusal and consistency tests of test_collection.py run on both backends; these check the parts
that differ (milvus-lite stands in for a Milvus server: the same pymilvus calls, in this process).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymilvus import MilvusClient
from typer.testing import CliRunner

from indexer import Collection, CollectionError
from indexer.cli import app
from indexer.ingest.sources import from_dataset
from indexer.manifest import IndexSpec, Manifest
from indexer.records import ImageRecord
from indexer.search import Filters
from indexer.vectors import milvus_store as ms
from indexer.vectors.backends import BackendConfig, new_store
from indexer.vectors.faiss_store import FaissStore
from tests.indexer.conftest import write_labelled_folder

runner = CliRunner()


def _record(i: int, labels: list[str], split: str | None) -> ImageRecord:
    return ImageRecord(
        id=i, path=None, uri=f"u{i}", sha256=f"{i:064x}", labels=labels, split=split, width=1, height=1,
        source="t", added_at=datetime.now(UTC), metadata={},
    )  # fmt: skip


def _lite_client(directory: Path) -> tuple[MilvusClient, str]:
    """A client of the collection's milvus-lite file, counted like the stores' (release it with ms._release)."""
    uri = str((directory / "milvus.db").resolve())
    return ms._connect(uri, None), uri


def _milvus_collections(directory: Path) -> list[str]:
    client, uri = _lite_client(directory)
    try:
        return sorted(client.list_collections())
    finally:
        client.close()
        ms._release(uri)


@pytest.fixture
def two_backends(tmp_path: Path, checkpoint: Path) -> Iterator[dict[str, Collection]]:
    """The same labelled images in a FAISS and a Milvus collection (same model, so the same vectors)."""
    root = write_labelled_folder(tmp_path / "data", 6)
    cols = {}
    for backend in ("faiss", "milvus"):
        col = Collection.create(tmp_path / backend, checkpoint, device="cpu", backend=backend)
        col.add_source(from_dataset(root, "imagefolder"), batch_size=16)
        cols[backend] = col
    yield cols
    for col in cols.values():
        col.close()


def test_filters_are_pushed_down_and_agree_with_faiss(
    two_backends: dict[str, Collection], monkeypatch: pytest.MonkeyPatch
) -> None:
    faiss_col, milvus_col = two_backends["faiss"], two_backends["milvus"]
    calls: list[tuple[int, Filters | None]] = []
    search = ms.MilvusStore.search

    def spy(self: ms.MilvusStore, queries: np.ndarray, k: int, filters: Filters | None = None) -> Any:
        calls.append((k, filters))
        return search(self, queries, k, filters)

    monkeypatch.setattr(ms.MilvusStore, "search", spy)
    query = faiss_col.vector(1)[None]
    top = faiss_col.search(query, 3)[0]
    cases: list[dict[str, Any]] = [
        {},
        {"labels": ["blue"]},
        {"labels": ["blue", "red"], "split": "test"},
        {"split": "train", "exclude_ids": {top[0].id}, "exclude_sha256": {top[1].record.sha256}},
    ]
    for filters in cases:
        calls.clear()
        expected = faiss_col.search(query, 5, **filters)[0]
        got = milvus_col.search(query, 5, **filters)[0]
        assert [h.id for h in got] == [h.id for h in expected], filters
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
        # One call asking for exactly k with the filters: nothing over-fetched and filtered afterwards.
        assert (
            len(calls) == 1 and calls[0][0] == 5 and (calls[0][1] is not None and calls[0][1].active) == bool(filters)
        )
    # A filtered search returns k whenever k exist: all 6 test images labelled blue, however far they are.
    got = milvus_col.search(query, 6, labels=["blue"], split="test")[0]
    assert len(got) == 6 and all(h.record.labels == ["blue"] and h.record.split == "test" for h in got)
    assert len(milvus_col.search(query, 50, labels=["green"])[0]) == 12


def test_filter_values_are_quoted_not_spliced(tmp_path: Path) -> None:
    labels = ['say "hi"', "back\\slash", "é ü", "x) or (id > 0"]
    records = {i + 1: _record(i + 1, [labels[i % 4]], "train" if i % 2 else None) for i in range(8)}
    spec = IndexSpec(type="flat", params={}, backend="milvus")
    store = new_store(
        spec, 4, directory=tmp_path, collection_id="abc", records=lambda ids: {i: records[i] for i in ids}
    )
    try:
        vectors = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
        store.add(list(records), vectors)
        for label in labels:
            _, ids = store.search(np.ones((1, 4), np.float32), 8, Filters(labels=frozenset([label])))
            assert sorted(int(i) for i in ids[0] if i >= 0) == [i for i, r in records.items() if r.labels == [label]]
        _, ids = store.search(np.ones((1, 4), np.float32), 8, Filters(split="train"))
        assert sorted(int(i) for i in ids[0] if i >= 0) == [2, 4, 6, 8]
        assert store.remove([1, 2, 99]) == 2 and store.ntotal == 6
        assert store.reconstruct([3]).tolist() == [vectors[2].tolist()]
    finally:
        store.discard()


def test_refresh_copies_changed_labels(two_backends: dict[str, Collection]) -> None:
    col = two_backends["milvus"]
    blue = [h.id for h in col.search(col.vector(1)[None], 50, labels=["blue"])[0]]
    col.store.edit([blue[0]], labels=["green"])  # as a relabel does: the database first, then the store
    col._index.refresh([blue[0], 10_000])
    assert [h.id for h in col.search(col.vector(1)[None], 50, labels=["blue"])[0]] == blue[1:]
    assert blue[0] in [h.id for h in col.search(col.vector(1)[None], 50, labels=["green"])[0]]
    assert col.ntotal == 36 and col.verify().ok


def test_ids_are_read_by_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ms, "ID_RANGE", 4)
    wanted = [1, 2, 3, 9, 10, 40, 41]
    records = {i: _record(i, ["a"], None) for i in wanted}
    store = new_store(IndexSpec(type="flat", params={}, backend="milvus"), 2, directory=tmp_path,
                      collection_id="abc", records=lambda ids: {i: records[i] for i in ids})  # fmt: skip
    try:
        store.add(wanted, np.ones((len(wanted), 2), np.float32))
        assert store.ids().tolist() == wanted
    finally:
        store.discard()


def test_uris_and_index_types_refused_with_the_reason(tmp_path: Path) -> None:
    spec = IndexSpec(type="ivfpq", params={}, backend="milvus")
    with pytest.raises(CollectionError, match="milvus-lite has no IVF_PQ"):
        new_store(spec, 8, directory=tmp_path, collection_id="abc", records=dict)
    flat = IndexSpec(type="flat", params={}, backend="milvus")
    with pytest.raises(CollectionError, match="credentials in the URI"):
        new_store(flat, 8, directory=tmp_path, collection_id="abc", records=dict,
                  config=BackendConfig(milvus_uri="http://root:secret@milvus:19530"))  # fmt: skip
    with pytest.raises(CollectionError, match="expected a milvus-lite file"):
        ms.resolve_uri("ftp://milvus", tmp_path)
    assert ms.recorded_uri(str(tmp_path / "milvus.db"), tmp_path) is None  # the default: the folder can move
    assert ms.recorded_uri("http://milvus:19530", tmp_path) == "http://milvus:19530"
    assert ms.is_lite(str(tmp_path / "x.db")) and not ms.is_lite("http://milvus:19530")


def test_rebuild_replaces_the_milvus_collection_and_drops_the_old(
    two_backends: dict[str, Collection], tmp_path: Path
) -> None:
    col = two_backends["milvus"]
    directory = col.directory
    before = json.loads((directory / ms.POINTER_FILE).read_text())["collection"]
    assert _milvus_collections(directory) == [before]
    query = col.vector(2)[None]
    hits = [h.id for h in col.search(query, 10)[0]]
    col.rebuild()
    after = json.loads((directory / ms.POINTER_FILE).read_text())["collection"]
    assert after != before and _milvus_collections(directory) == [after]
    assert [h.id for h in col.search(query, 10)[0]] == hits and col.verify().ok
    assert not (directory / "index.faiss").exists()


def test_missing_milvus_collection_is_reported_and_rebuilt(tmp_path: Path, two_backends: dict[str, Collection]) -> None:
    col = two_backends["milvus"]
    directory = col.directory
    name = json.loads((directory / ms.POINTER_FILE).read_text())["collection"]
    col.close()
    client, uri = _lite_client(directory)
    client.drop_collection(name)
    client.close()
    ms._release(uri)
    with pytest.raises(CollectionError, match=r"not found.*msir-index rebuild"):
        Collection.open(directory, device="cpu")
    with Collection.open(directory, device="cpu", strict=False) as broken:
        report = broken.verify()
        assert not report.ok and any(p.startswith("index unreadable") for p in report.problems)
        broken.rebuild()
        assert broken.verify().ok and broken.ntotal == 36
    with Collection.open(directory, device="cpu") as col:
        assert col.ntotal == 36


def test_a_foreign_pointer_is_refused(two_backends: dict[str, Collection]) -> None:
    col = two_backends["milvus"]
    col.close()
    (col.directory / ms.POINTER_FILE).write_text(json.dumps({"collection": "msir_someoneelse_1234"}))
    with pytest.raises(CollectionError, match="not one of collection"):
        Collection.open(col.directory, device="cpu")


def test_lite_file_is_released_when_the_last_user_closes(two_backends: dict[str, Collection]) -> None:
    from milvus_lite.server_manager import server_manager_instance

    col = two_backends["milvus"]
    uri = str((col.directory / "milvus.db").resolve())
    second = Collection.open(col.directory, device="cpu")
    assert ms._lite_users[uri] == 2
    second.close()
    assert ms._lite_users[uri] == 1 and uri in server_manager_instance._servers
    col.close()
    # Another process may now open the file (milvus-lite holds a lock on it while serving).
    assert uri not in ms._lite_users and uri not in server_manager_instance._servers


def _cli(*args: str | Path, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stdout


def test_cli_build_on_milvus_and_switch_backends(tmp_path: Path, checkpoint: Path) -> None:
    root = write_labelled_folder(tmp_path / "data", 3)
    directory = tmp_path / "col"
    lite = tmp_path / "elsewhere" / "vectors.db"
    common = ["--workers", "0", "--device", "cpu", "--json"]
    out = json.loads(_cli("build", directory, "-c", checkpoint, "--data", root, "--backend", "milvus",
                          "--milvus-uri", lite, *common))  # fmt: skip
    assert out["vectors"] == 18
    manifest = Manifest.load(directory)
    assert manifest.index.backend == "milvus" and manifest.index.uri == str(lite.resolve())
    assert (directory / ms.POINTER_FILE).is_file() and not (directory / "index.faiss").exists()
    assert json.loads(_cli("verify", directory, "--json"))["ok"]
    _cli("build", directory, "-c", checkpoint, "--data", root, "--backend", "faiss", *common, code=2)
    # Switch to FAISS and back, through rebuild: the database is the truth, nothing is re-embedded.
    _cli("rebuild", directory, "--backend", "faiss")
    assert Manifest.load(directory).index.backend == "faiss" and not (directory / ms.POINTER_FILE).exists()
    with Collection.open(directory, device="cpu") as col:
        assert isinstance(col._index, FaissStore) and col.verify().ok
        hits = [h.id for h in col.search(col.vector(4)[None], 5, labels=["red"])[0]]
    _cli("rebuild", directory, "--backend", "milvus", "--index", "hnsw")
    manifest = Manifest.load(directory)
    assert (manifest.index.backend, manifest.index.type) == ("milvus", "hnsw")
    assert not (directory / "index.faiss").exists() and (directory / "milvus.db").exists()
    with Collection.open(directory, device="cpu") as col:
        assert [h.id for h in col.search(col.vector(4)[None], 5, labels=["red"])[0]] == hits
        assert col.stats()["index"]["milvus_index"] == "HNSW"
    assert json.loads(_cli("verify", directory, "--json"))["ok"]
    _cli("build", tmp_path / "bad", "-c", checkpoint, "--data", root, "--backend", "pinecone", *common, code=2)


def test_cli_label_reaches_milvus_through_the_milvus_options(tmp_path: Path, checkpoint: Path) -> None:
    """``label`` writes the new labels to Milvus (its scalar filters), so it takes --milvus-uri/--milvus-token as
    every command that opens the collection does."""
    root = write_labelled_folder(tmp_path / "data", 3)
    directory = tmp_path / "col"
    lite = tmp_path / "elsewhere" / "vectors.db"
    _cli("build", directory, "-c", checkpoint, "--data", root, "--backend", "milvus", "--milvus-uri", lite,
         "--workers", "0", "--device", "cpu", "--json")  # fmt: skip
    out = json.loads(_cli("label", directory, "--id", "4", "--id", "5", "--set", "violet", "--milvus-uri", lite,
                          "--milvus-token", "unused-by-lite", "--json"))  # fmt: skip
    assert out == {"changed": [4, 5], "not_found": []}
    config = BackendConfig(milvus_uri=str(lite))
    with Collection.open(directory, device="cpu", backend_config=config) as col:
        assert col._index.backend == "milvus" and col._index.filters_pushed_down
        hits = col.search(col.vector(4)[None], 10, labels=["violet"])[0]
        assert sorted(h.id for h in hits) == [4, 5]
