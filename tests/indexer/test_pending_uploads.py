"""Pending uploads of a process that died mid-upload are settled (at a server's start and by ``verify --repair``);
those of a live writer are never touched, however old."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from indexer import Collection, DatabaseUnavailable, Upload, upload_files
from indexer.verification import settle_dead_uploads
from tests.indexer.conftest import write_images

# A writer process: stages one upload, says where, then waits (to be killed, or told to exit on stdin).
WRITER = """
import sys
from pathlib import Path
from indexer import upload_files
pending, _ = upload_files.stage(Path(sys.argv[1]), Path(sys.argv[2]).read_bytes(), ".png")
print(pending, flush=True)
sys.stdin.readline()
"""


def start_writer(directory: Path, image: Path) -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(image)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line, "the writer process staged nothing"
    return process, Path(line)


def test_dead_writers_pending_uploads_are_settled_and_a_live_writers_kept(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 3)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        assert len(col.add_uploads([Upload(images[0].read_bytes(), ".png")]).added) == 1

    live, live_file = start_writer(directory, images[1])
    dead, dead_file = start_writer(directory, images[2])
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=60)
        old = time.time() - 3600  # both older than any age rule: only the owner's liveness tells them apart
        for file in (live_file, dead_file):
            os.utime(file, (old, old))
        assert upload_files.stale_pending(directory) == [dead_file]

        with Collection.open(directory, device="cpu") as col:
            report = col.verify()
            assert report.details["stale_pending_uploads"] == 1 and not report.ok
            assert settle_dead_uploads(col) == (0, 1)  # no row: removed
            assert not dead_file.exists() and live_file.is_file()
            assert col.verify().ok, col.verify().problems  # the live writer's file is no problem
            col.repair()  # verify --repair: the same rule
            assert live_file.is_file()
        # The dead owner's lock file went with its pending file; the live one's (and this process's) are kept.
        locks = {p.name for p in (directory / upload_files.OWNERS).glob("*.lock")}
        assert f"{dead_file.name.split('.', 1)[0]}.lock" not in locks
        assert f"{live_file.name.split('.', 1)[0]}.lock" in locks
    finally:
        for process in (live, dead):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=60)
    # Once the live writer is gone too, its file is settled like any other.
    with Collection.open(directory, device="cpu") as col:
        assert settle_dead_uploads(col) == (0, 1)
        assert not live_file.exists()


def test_a_committed_upload_of_a_dead_writer_is_moved_in(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 1)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        record = col.get(col.add_uploads([Upload(images[0].read_bytes(), ".png")]).added[0])
        assert record is not None and record.path is not None
    final = directory / record.path  # stored relative to the collection
    # Killed between the commit and the move: the row exists, the file is still pending under a dead owner.
    writer, pending = start_writer(directory, images[0])
    writer.kill()
    writer.wait(timeout=60)
    final.unlink()
    with Collection.open(directory, device="cpu") as col:
        assert settle_dead_uploads(col) == (1, 0)
        assert final.is_file() and not pending.exists()
        assert col.verify().ok


def test_a_delete_leaves_no_file_when_the_database_drops_after_its_commit(tmp_path: Path, checkpoint: Path) -> None:
    # Found by benchmarks/crasher.py: a connection cut between the delete's commit and the file's removal left an
    # orphan upload. The files of deleted rows are removed without asking the database again.
    images = write_images(tmp_path / "imgs", 3)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        ids = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images]).added

        def cut(*_: object) -> list[int]:
            raise DatabaseUnavailable("connection cut")

        col.store.ids_for_paths = cut  # type: ignore[method-assign]
        assert col.remove(ids[:2]) == 2
        assert len(upload_files.stored_files(directory)) == 1
        del col.store.ids_for_paths
        assert col.verify().ok


def test_server_start_removes_the_file_of_a_row_deleted_by_a_killed_process(tmp_path: Path, checkpoint: Path) -> None:
    images = write_images(tmp_path / "imgs", 2)
    directory = tmp_path / "col"
    with Collection.create(directory, checkpoint, device="cpu") as col:
        ids = col.add_uploads([Upload(p.read_bytes(), ".png") for p in images]).added
        record = col.get(ids[0])
        assert record is not None and record.path is not None
        left = directory / record.path
        col.store.delete([ids[0]])  # as if killed after the delete's commit, before the file was removed
        col.rebuild()
        assert left.is_file() and not col.verify().ok
        assert settle_dead_uploads(col) == (0, 1)
        assert not left.exists() and col.verify().ok
        assert (directory / col.get(ids[1]).path).is_file()  # type: ignore[union-attr, operator]
