"""``verify`` reports what is wrong on disk with counts (index lag, orphan and missing files) instead of repairing it
silently; ``verify --repair`` fixes what it can and says what it did."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer import Collection, Upload, row_paths
from indexer.cli import app
from indexer.metadata.queries import MetadataStore
from indexer.vectors.faiss_index import INDEX_FILE
from tests.indexer.backends import drop_saved_vectors
from tests.indexer.conftest import write_images

runner = CliRunner()


def verify(directory: Path, *extra: str, code: int) -> dict:
    result = runner.invoke(app, ["verify", str(directory), "--json", *extra])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


def test_verify_reports_lag_and_files_and_repair_fixes_them(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 8)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        empty_index = (directory / INDEX_FILE).read_bytes()
        report = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images[:6]])
        assert len(report.added) == 6
        # A committed upload whose move into place was lost (killed between the commit and the move).
        record = col.get(report.added[0])
        assert record is not None and record.path is not None
        final = directory / record.path  # stored relative to the collection
    pending = directory / "uploads" / ".pending" / f"0123-{final.name}"
    os.replace(final, pending)
    # An orphan upload (no row) and a stale pending upload of a killed process.
    orphan = directory / "uploads" / "ab" / ("ab" + "0" * 62 + ".png")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(images[6].read_bytes())
    stale = directory / "uploads" / ".pending" / f"4567-{'cd' + '1' * 62}.png"
    stale.write_bytes(images[7].read_bytes())
    old = time.time() - 3600
    for file in (pending, stale):
        os.utime(file, (old, old))
    # The index file from before the adds: as after a build killed between its commits and its index save.
    (directory / INDEX_FILE).write_bytes(empty_index)

    report = verify(directory, code=1)
    assert report["lagging_rows"] == 6 and report["vectors"] == 0
    assert report["missing_files_count"] == 1 and report["missing_files"] == [record.id]
    assert report["orphan_files_count"] == 1 and report["stale_pending_uploads"] == 2
    assert {p.split(":")[0] for p in report["problems"]} >= {"index lag", "missing files", "orphan files"}
    # verify itself changed nothing.
    assert verify(directory, code=1)["lagging_rows"] == 6

    repaired = verify(directory, "--repair", code=0)
    done = " ".join(repaired["repaired"])
    assert "caught the index up" in done and "moved 1 committed pending upload" in done
    assert "removed 2 orphan file(s)" in done
    assert repaired["vectors"] == 6 and final.is_file() and not orphan.exists() and not stale.exists()
    assert verify(directory, code=0)["ok"]


def test_repair_rebuilds_on_drift_and_names_unrepairable_files(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 4)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        col.add_uploads([Upload(p.read_bytes(), ".png") for p in images])
        gone = col.get(2)
        assert gone is not None and gone.path is not None
    (directory / gone.path).unlink()  # a file lost for good
    result = runner.invoke(app, ["verify", str(directory), "--repair"])
    assert result.exit_code == 1, result.output
    assert "not repaired: 1 row(s) whose file is missing" in result.stdout
    assert "missing files: 1 row(s)" in result.stdout


def test_verify_sample_checks_drawn_rows_without_scanning(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_images(tmp_path / "imgs", 24)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        ids = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images]).added
        paths = {i: col.get(i).path for i in ids}  # type: ignore[union-attr]

    def no_scan(*_: object) -> None:
        raise AssertionError("verify --sample scanned the table")

    for name in ("ids", "problems", "iter_paths"):  # the full-table reads of a full verify
        monkeypatch.setattr(MetadataStore, name, no_scan)
    clean = verify(directory, "--sample", "8", code=0)
    assert clean["rows"] == clean["vectors"] == 24 and 0 < clean["sampled_ids"] <= 16

    drop_saved_vectors(directory, ids[::2])  # half the rows lose their vector behind the collection's back
    for i in ids[1::2]:
        row_paths.resolve(directory, paths[i]).unlink()  # and the other half their file
    report = verify(directory, "--sample", "24", code=1)
    found = {p.split(":")[0] for p in report["problems"]}
    assert {"orphan rows", "count mismatch", "missing files"} <= found, report["problems"]
    assert set(report["orphan_rows"]) <= set(ids[::2]) and report["orphan_rows"]
    assert set(report["missing_files"]) <= set(ids[1::2]) and report["missing_files"]
    assert report["rows"] == 24 and report["vectors"] == 12
    assert runner.invoke(app, ["verify", str(directory), "--sample", "0"]).exit_code == 2  # refused by the CLI
