"""Portable collections (issue #23): rows store their files relative to the collection, so a copy (``cp -a``) or a
moved collection verifies clean with ``msir-index verify``, and ``verify --repair`` never deletes a file a row needs.
Collections written by an older msir (absolute upload paths) are migrated to relative paths on open."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from indexer import Collection, Upload, upload_files
from indexer.cli import app
from indexer.ingest.sources import from_files
from indexer.metadata.tables import make_engine
from tests.indexer.conftest import write_images

runner = CliRunner()


def uploaded_collection(tmp_path: Path, checkpoint: Path, count: int = 4) -> tuple[Path, list[int]]:
    images = write_images(tmp_path / "imgs", count)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        report = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images])
        assert len(report.added) == count
    return directory, list(report.added)


def stored_paths(directory: Path) -> dict[int, tuple[str, str]]:
    engine = make_engine(f"sqlite:///{directory / 'metadata.db'}")
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, uri, path FROM images")).all()
    engine.dispose()
    return {int(r.id): (r.uri, r.path) for r in rows}


def verify_cli(directory: Path) -> None:
    result = runner.invoke(app, ["verify", str(directory)])
    assert result.exit_code == 0, result.output


def assert_every_file_found(directory: Path, ids: list[int]) -> None:
    with Collection.open(directory, device="cpu") as col:
        for image_id in ids:
            record = col.get(image_id)
            assert record is not None and record.path is not None
            assert not record.path.is_absolute() and (directory / record.path).is_file()


def test_uploads_are_stored_relative_to_the_collection(tmp_path: Path, checkpoint: Path) -> None:
    directory, ids = uploaded_collection(tmp_path, checkpoint)
    rows = stored_paths(directory)
    assert sorted(rows) == sorted(ids)
    for uri, path in rows.values():
        assert uri == path and path.startswith("uploads/") and (directory / path).is_file()


def test_a_cp_a_copy_verifies_clean_and_repair_deletes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    directory, ids = uploaded_collection(tmp_path, checkpoint)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(directory), str(copy)], check=True)
    shutil.rmtree(directory)  # nothing of the copy may lean on the original
    files = upload_files.stored_files(copy)
    assert len(files) == 4
    verify_cli(copy)
    with Collection.open(copy, device="cpu") as col:
        assert col.repair() == []
    assert upload_files.stored_files(copy) == files
    assert_every_file_found(copy, ids)


def test_a_moved_collection_verifies_clean(tmp_path: Path, checkpoint: Path) -> None:
    directory, ids = uploaded_collection(tmp_path, checkpoint)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(directory, moved)
    verify_cli(moved)
    assert_every_file_found(moved, ids)


def test_absolute_paths_of_an_older_msir_are_migrated(tmp_path: Path, checkpoint: Path) -> None:
    directory, ids = uploaded_collection(tmp_path, checkpoint)
    own = write_images(directory / "own", 1, seed=5)[0]  # a file inside the collection that is not an upload
    with Collection.open(directory, device="cpu") as col:
        own_id = col.add_source(from_files([own], name="own")).added[0]
    # As revision 0002 left them: absolute paths (an upload's uri is its path).
    engine = make_engine(f"sqlite:///{directory / 'metadata.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE images SET path = :root || '/' || path"), {"root": str(directory.resolve())})
        conn.execute(sa.text("UPDATE images SET uri = path WHERE source = 'upload'"))
        conn.execute(sa.text("ALTER TABLE images DROP COLUMN copy_descriptor"))  # added by revision 0004
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
    engine.dispose()
    assert all(path.startswith("/") for _, path in stored_paths(directory).values())
    with Collection.open(directory, device="cpu"):
        pass  # migrates
    rows = stored_paths(directory)
    for image_id in ids:
        assert rows[image_id][0] == rows[image_id][1] and rows[image_id][1].startswith("uploads/")
    assert rows[own_id][1] == f"own/{own.name}"
    moved = tmp_path / "moved"
    shutil.move(directory, moved)
    verify_cli(moved)
    assert_every_file_found(moved, [*ids, own_id])
