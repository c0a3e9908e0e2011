"""A build killed with SIGKILL part-way continues on re-run: no image lost, none indexed twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import faiss
from typer.testing import CliRunner

from indexer.cli import app
from tests.conftest import live_descendants
from tests.indexer.conftest import write_images

runner = CliRunner()

REPO = Path(__file__).resolve().parents[2]
N_IMAGES = 300


def _rows(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM images").fetchone()[0])
    except sqlite3.Error:  # not created / not migrated yet
        return 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie is dead, waiting to be reaped


def _cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "indexer.cli", *(str(a) for a in args)]


def test_build_killed_midway_resumes(tmp_path: Path, checkpoint: Path) -> None:
    write_images(tmp_path / "imgs", N_IMAGES)
    directory = tmp_path / "col"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    # Small batches and an index save after every batch: the kill lands between (or inside) commits and saves.
    build = _cli(
        "build",
        directory,
        "-c",
        checkpoint,
        "--folder",
        tmp_path / "imgs",
        "--batch-size",
        "2",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--save-every",
        "0",
        "--json",
    )
    proc = subprocess.Popen(build, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _rows(directory / "metadata.db") < 40:
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "build made no progress"
        time.sleep(0.02)
    workers = live_descendants(proc.pid)
    assert len(workers) >= 2, workers  # the two decode workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _rows(directory / "metadata.db")
    assert proc.returncode == -signal.SIGKILL and 40 <= killed_at < N_IMAGES
    # Nothing of the build outlives it: its workers die with it (no orphan holding the database).
    # Each worker polls its parent (indexer.ingest.decode.die_with_parent): wait for the event, bounded only
    # against a hang.
    deadline = time.monotonic() + 60
    while [pid for pid in workers if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], workers

    # verify reports a lagging index with its count (it does not catch it up silently).
    in_file = faiss.read_index(str(directory / "index.faiss")).ntotal
    checked = runner.invoke(app, ["verify", str(directory), "--json"])
    if in_file < killed_at:  # killed between a commit and the index save that follows it
        assert checked.exit_code == 1, checked.output
        assert json.loads(checked.stdout)["lagging_rows"] == killed_at - in_file
        assert any(p.startswith("index lag") for p in json.loads(checked.stdout)["problems"])

    # The re-run and the check run in this process (a fresh process is what was killed; startup is the slow part).
    rerun = runner.invoke(app, [*build[3:], "--resume"])
    assert rerun.exit_code == 0, rerun.output
    report = json.loads(rerun.stdout)
    assert report["already_present"] >= killed_at and report["added"] + report["already_present"] == N_IMAGES
    assert report["vectors"] == N_IMAGES

    verify = runner.invoke(app, ["verify", str(directory), "--json"])
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["vectors"] == N_IMAGES
    with sqlite3.connect(directory / "metadata.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT sha256), count(DISTINCT uri) FROM images").fetchone() == (
            N_IMAGES,
            N_IMAGES,
            N_IMAGES,
        )
    assert not list(directory.glob(".*.tmp"))
