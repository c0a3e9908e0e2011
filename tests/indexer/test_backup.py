"""``msir-index backup`` / ``restore`` (issue #23): a snapshot of rows, files and index generation, restored under
another path and into another database (SQLite <-> PostgreSQL); the restored collection verifies clean and every
image resolves to its bytes; a damaged archive (a flipped byte, a missing member) is refused in one line, non-zero,
leaving nothing behind."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from indexer import Collection, Upload, row_paths
from indexer.backup import BACKUP_FILE
from indexer.cli import app
from tests.indexer.conftest import fresh_schema, write_images

runner = CliRunner()


def cli(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def build(directory: Path, checkpoint: Path, images: Path, url: str | None = None) -> dict[int, str]:
    """Uploads, a deletion of the newest row (its id must never come back) and a relabel: ``{id: sha256}``."""
    files = write_images(images, 6)
    with Collection.create(directory, checkpoint, device="cpu", database_url=url) as col:
        added = col.add_uploads([Upload(p.read_bytes(), ".png", labels=["a"]) for p in files])
        assert len(added.added) == 6
        col.remove([max(added.added)])
        col.edit([min(added.added)], labels=["b"])
        return {i: r.sha256 for i, r in col.get_many(col.store.ids()).items()}


def check_restored(target: Path, checkpoint: Path, expected: dict[int, str], url: str | None = None) -> None:
    code, output = cli("verify", target, *(["--db", url] if url else []))
    assert code == 0, output
    with Collection.open(target, device="cpu", database_url=url) as col:
        records = col.get_many(expected)
        assert {i: r.sha256 for i, r in records.items()} == expected
        for record in records.values():  # every image resolves to its own bytes under the new path
            assert record.path is not None and not record.path.is_absolute()
            file = row_paths.resolve(target, record.path)
            assert hashlib.sha256(file.read_bytes()).hexdigest() == record.sha256
        assert col.get(min(expected)).labels == ["b"]  # type: ignore[union-attr]
        # Ids are never reused: the restored counter continues after the deleted newest row.
        new = col.add_uploads([Upload(write_images(target.parent / "more", 1, seed=9)[0].read_bytes(), ".png")])
        assert new.added[0] > max(expected) + 1


def test_sqlite_backup_restores_under_another_path(tmp_path: Path, checkpoint: Path) -> None:
    expected = build(tmp_path / "col", checkpoint, tmp_path / "imgs")
    code, output = cli("backup", tmp_path / "col", tmp_path / "col.tar")
    assert code == 0 and "5 images, 5 files" in output, output
    with tarfile.open(tmp_path / "col.tar") as tar:
        header = json.loads(tar.extractfile(BACKUP_FILE).read())  # type: ignore[union-attr]
    assert header["rows"]["images"] == 5 and len(header["members"]) == 3 + 5 + 2  # rows, uploads, manifest + index
    code, output = cli("restore", tmp_path / "col.tar", tmp_path / "elsewhere" / "restored")
    assert code == 0, output
    check_restored(tmp_path / "elsewhere" / "restored", checkpoint, expected)


def damaged_copies(archive: Path, tmp_path: Path) -> dict[str, Path]:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        upload = next(m for m in members if m.name.startswith("collection/uploads/"))
        flipped = bytearray(archive.read_bytes())
        flipped[upload.offset_data + upload.size // 2] ^= 0x01
        out = {"flipped": tmp_path / "flipped.tar", "missing": tmp_path / "missing.tar"}
        out["flipped"].write_bytes(bytes(flipped))
        with tarfile.open(out["missing"], "w") as dst:
            for m in members:
                if m.name != upload.name:
                    dst.addfile(m, io.BytesIO(tar.extractfile(m).read()))  # type: ignore[union-attr]
    return out


def test_restore_refuses_a_damaged_archive_leaving_nothing(tmp_path: Path, checkpoint: Path) -> None:
    build(tmp_path / "col", checkpoint, tmp_path / "imgs")
    assert cli("backup", tmp_path / "col", tmp_path / "col.tar")[0] == 0
    for kind, archive in damaged_copies(tmp_path / "col.tar", tmp_path).items():
        target = tmp_path / "out" / kind
        code, output = cli("restore", archive, target)
        assert code != 0, output
        lines = [line for line in output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and "damaged" in lines[0] and "collection/uploads/" in lines[0], (kind, output)
        assert not target.exists() and list((tmp_path / "out").iterdir()) == []  # no staging folder left


@pytest.mark.postgres
def test_sqlite_to_postgres_and_back(tmp_path: Path, checkpoint: Path, postgres_url: str) -> None:
    expected = build(tmp_path / "col", checkpoint, tmp_path / "imgs")
    assert cli("backup", tmp_path / "col", tmp_path / "sqlite.tar")[0] == 0
    with fresh_schema(postgres_url, "issue23_bk") as url:
        # A damaged archive leaves the database untouched too.
        flipped = damaged_copies(tmp_path / "sqlite.tar", tmp_path)["flipped"]
        assert cli("restore", flipped, tmp_path / "pg", "--database-url", url)[0] != 0
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []
        engine.dispose()
        code, output = cli("restore", tmp_path / "sqlite.tar", tmp_path / "pg", "--database-url", url)
        assert code == 0, output
        check_restored(tmp_path / "pg", checkpoint, expected, url)
        # PostgreSQL -> SQLite: the PG collection (with the row added above) backed up and restored elsewhere.
        code, output = cli("backup", tmp_path / "pg", tmp_path / "pg.tar", "--db", url)
        assert code == 0, output
    code, output = cli("restore", tmp_path / "pg.tar", tmp_path / "back")
    assert code == 0, output
    code, output = cli("verify", tmp_path / "back")
    assert code == 0, output
    with Collection.open(tmp_path / "back", device="cpu") as col:
        assert col.store.count() == len(expected) + 1
        for record in col.get_many(col.store.ids()).values():
            assert record.path is not None
            file = row_paths.resolve(tmp_path / "back", record.path)
            assert hashlib.sha256(file.read_bytes()).hexdigest() == record.sha256
