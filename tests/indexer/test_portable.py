"""A copied or moved collection keeps every upload: ``verify`` does not call the files its rows need orphans, and
``verify --repair`` never deletes them (issue #23: repair deleted the 307 files a moved collection's rows needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from indexer import Collection, Upload, upload_files
from tests.indexer.conftest import write_images


def uploaded_collection(tmp_path: Path, checkpoint: Path, count: int = 4) -> tuple[Path, list[int]]:
    images = write_images(tmp_path / "imgs", count)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        report = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images])
        assert len(report.added) == count
    return directory, list(report.added)


def test_a_cp_a_copy_verifies_clean_and_repair_deletes_nothing(tmp_path: Path, checkpoint: Path) -> None:
    directory, _ = uploaded_collection(tmp_path, checkpoint)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(directory), str(copy)], check=True)
    files = upload_files.stored_files(copy)
    assert len(files) == 4
    with Collection.open(copy, device="cpu") as col:
        report = col.verify()
        assert report.ok, report.problems
        assert report.details["orphan_files_count"] == 0
        col.repair()
    assert upload_files.stored_files(copy) == files


def test_a_moved_collection_reports_relocated_files_and_repair_keeps_them(tmp_path: Path, checkpoint: Path) -> None:
    directory, ids = uploaded_collection(tmp_path, checkpoint)
    moved = tmp_path / "moved"
    shutil.move(directory, moved)  # the rows still name files under the old path
    files = upload_files.stored_files(moved)
    with Collection.open(moved, device="cpu") as col:
        report = col.verify()
        assert report.details["orphan_files_count"] == 0
        assert sorted(report.details["relocated_files"]) == sorted(ids)
        assert not any(p.startswith("missing files") for p in report.problems), report.problems
        done = col.repair()
        assert not any("removed" in line or "not repaired" in line for line in done), done
        assert any(line.startswith(f"kept: {len(ids)} upload(s)") for line in done), done
        for image_id in ids:
            record = col.get(image_id)
            assert record is not None and record.path is not None
            assert upload_files.locate(moved, record.path).is_file()
    assert upload_files.stored_files(moved) == files
