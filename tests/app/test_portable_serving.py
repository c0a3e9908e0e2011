"""The service on a moved collection serves every uploaded image (its rows still hold the old absolute path), and
its start settles the pending uploads a killed writer left (issue #23)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from indexer import upload_files
from tests.app.helpers import AUTH, Fixture, class_image, png_bytes

STAGE_AND_DIE = """
import os, sys
from pathlib import Path
from indexer import upload_files
pending, _ = upload_files.stage(Path(sys.argv[1]), b"not committed", ".png")
print(pending, flush=True)
os._exit(0)  # no clean-up: as after kill -9 between writing aside and committing
"""


def test_a_moved_collection_serves_its_uploads(sqlite_collection: Fixture, tmp_path: Path) -> None:
    with TestClient(create_app(sqlite_collection.settings())) as client:
        files = [("images", (f"u{i}.png", png_bytes(class_image(i % 3, 70 + i)), "image/png")) for i in range(3)]
        r = client.post("/v1/images", files=files, headers=AUTH)
        assert r.status_code == 201, r.text
        ids = [a["id"] for a in r.json()["added"]]
    moved = tmp_path / "moved"
    shutil.move(sqlite_collection.directory, moved)
    fixture = dataclasses.replace(sqlite_collection, directory=moved)
    with TestClient(create_app(fixture.settings())) as client:
        for image_id in ids:
            r = client.get(f"/v1/images/{image_id}")
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", (image_id, r.status_code)


def test_server_start_settles_a_dead_writers_pending_upload(sqlite_collection: Fixture) -> None:
    out = subprocess.run(
        [sys.executable, "-c", STAGE_AND_DIE, str(sqlite_collection.directory)],
        capture_output=True,
        text=True,
        check=True,
    )
    pending = Path(out.stdout.strip())
    assert pending.is_file() and upload_files.stale_pending(sqlite_collection.directory) == [pending]
    with TestClient(create_app(sqlite_collection.settings())) as client:
        assert client.get("/healthz").status_code == 200
    assert not pending.exists()
