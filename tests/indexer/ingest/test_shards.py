"""Sharded builds: ``msir-index build --shard I/N`` processes at once into one PostgreSQL collection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from indexer import Collection
from indexer.cli import app
from indexer.errors import CollectionError
from indexer.ingest.shards import Shard
from indexer.ingest.sources import from_folder, take_shard
from tests.indexer.conftest import fresh_schema, write_labelled_folder

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def cli(*args: str | Path, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}: {result.output}"
    return result.stdout


@pytest.fixture
def pg_collection_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL bound to a fresh schema (dropped afterwards)."""
    with fresh_schema(postgres_url, "msir_i13") as url:
        yield url


def rows(url: str | None, directory: Path) -> set[tuple[str, str]]:
    with Collection.open(directory, database_url=url, device="cpu", strict=False) as col, col.store.session() as s:
        return {(r.uri, r.sha256) for r in s.execute(sa.text("SELECT uri, sha256 FROM images"))}


def shard_processes(directory: Path, url: str, checkpoint: Path, root: Path) -> list[dict]:
    """Both shards launched at once, as two hosts would; their JSON reports."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")} | {"OMP_NUM_THREADS": "1"}
    exe = shutil.which("msir-index", path=str(Path(sys.executable).parent))
    assert exe is not None
    common = ["-c", str(checkpoint), "--data", str(root), "--db", url, "--workers", "0", "--batch-size", "7"]
    procs = [
        subprocess.Popen(
            [exe, "build", str(directory), *common, "--device", "cpu", "--shard", f"{i}/2", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for i in range(2)
    ]
    reports = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=240)
            assert proc.returncode == 0, stderr[-4000:]
            reports.append(json.loads(stdout))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


@pytest.mark.postgres
def test_two_shards_at_once_equal_a_one_process_build(tmp_path: Path, checkpoint: Path, pg_collection_url: str) -> None:
    root = write_labelled_folder(tmp_path / "data", 6)  # 36 images in train/test x 3 classes
    # The same content twice: whichever shard meets it second records a duplicate, as one process would.
    shutil.copy(root / "train" / "red" / "0000.png", root / "test" / "blue" / "copy.png")
    reference = tmp_path / "one"
    single = json.loads(
        cli("build", reference, "-c", checkpoint, "--data", root, "--workers", "0", "--device", "cpu", "--json")
    )
    assert single["added"] == 36 and single["duplicates"] == 1

    sharded = tmp_path / "sharded"
    first = shard_processes(sharded, pg_collection_url, checkpoint, root)
    assert [r["shard"] for r in first] == ["0/2", "1/2"] and {r["source_items"] for r in first} == {37}
    # The summary adds up: the shards' items are the source, added + duplicates are what one process saw.
    assert sum(r["total"] for r in first) == 37
    assert sum(r["added"] for r in first) == 36 and sum(r["duplicates"] for r in first) == 1
    assert not (sharded / "index.faiss").exists()  # no shard builds the index

    # The index, once, from the database; then the collection checks out.
    assert "36 vectors" in cli("rebuild", sharded, "--db", pg_collection_url, "-c", checkpoint)
    verify = json.loads(cli("verify", sharded, "--db", pg_collection_url, "--json"))
    assert verify["ok"], verify
    got, want = rows(pg_collection_url, sharded), rows(None, reference)
    assert {sha for _, sha in got} == {sha for _, sha in want} and len(got) == len(want) == 36
    dup = {str(root / "train" / "red" / "0000.png"), str(root / "test" / "blue" / "copy.png")}
    assert {u for u, _ in got} - dup == {u for u, _ in want} - dup

    # Running the shards again adds nothing.
    again = shard_processes(sharded, pg_collection_url, checkpoint, root)
    assert [r["added"] for r in again] == [0, 0] and sum(r["already_present"] for r in again) == 36
    assert len(rows(pg_collection_url, sharded)) == 36


def test_shards_are_disjoint_deterministic_and_cover_the_source(tmp_path: Path) -> None:
    root = write_labelled_folder(tmp_path / "data", 4)
    source = from_folder(root)
    parts = [take_shard(source, i, 3) for i in range(3)]
    uris = [[item.uri for item in p.items] for p in parts]
    assert sorted(u for part in uris for u in part) == sorted(item.uri for item in source.items)
    assert not set(uris[0]) & set(uris[1]) and [len(u) for u in uris] == [8, 8, 8]
    assert uris == [[item.uri for item in take_shard(from_folder(root), i, 3).items] for i in range(3)]
    assert Shard.parse("2/3") == Shard(2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(CollectionError, match="I/N"):
            Shard.parse(bad)


def test_shard_refuses_sqlite_and_a_missing_db(tmp_path: Path, checkpoint: Path) -> None:
    root = write_labelled_folder(tmp_path / "data", 2)
    base = ["build", tmp_path / "c", "-c", checkpoint, "--data", root, "--device", "cpu", "--shard", "0/2"]
    assert "--shard needs --db" in runner.invoke(app, [str(a) for a in base]).output
    out = runner.invoke(app, [str(a) for a in [*base, "--db", f"sqlite:///{tmp_path / 'm.db'}"]]).output
    assert "not SQLite" in out
    assert "--checkpoint and --db" in runner.invoke(app, ["rebuild", str(tmp_path / "nothing")]).output
