"""The indexer's progress bar at 80 columns: bar, image count and ETA stay on screen whatever the source name."""

from __future__ import annotations

from pathlib import Path

import pytest

import indexer.ingest.pipeline
from indexer import Collection
from indexer.ingest.sources import from_folder
from tests.indexer.conftest import write_images
from tests.progress_screen import check_screen, record_progress


def test_indexing_progress_at_80_columns(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A long folder path: the description ("indexing folder /…") is what gets cut, never the count or the ETA.
    folder = tmp_path / ("a_rather_long_folder_name_of_holiday_photos_" * 2)
    write_images(folder, 200)
    shots = record_progress(monkeypatch, indexer.ingest.pipeline)
    with Collection.create(tmp_path / "col", checkpoint, device="cpu") as col:
        report = col.add_source(from_folder(folder), batch_size=32, workers=0, progress=True)
    assert len(report.added) == 200
    assert len(shots) == 4  # one redraw per listed chunk of 64 images
    done, total, eta = check_screen(shots[2], "indexing folder")
    assert (done, total) == (192, 200) and eta
    assert "img/s" in shots[2].splitlines()[0]
    assert check_screen(shots[-1], "indexing folder")[:2] == (200, 200)
