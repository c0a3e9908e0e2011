"""The service on a copied or moved collection serves every image (rows store paths relative to the collection), and
its start settles the pending uploads a killed writer left (issue #23)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


@pytest.mark.parametrize("how", ["cp -a", "move"])
def test_a_copied_or_moved_collection_serves_every_image(sqlite_collection: Fixture, tmp_path: Path, how: str) -> None:
    with TestClient(create_app(sqlite_collection.settings())) as client:
        files = [("images", (f"u{i}.png", png_bytes(class_image(i % 3, 70 + i)), "image/png")) for i in range(3)]
        r = client.post("/v1/images", files=files, headers=AUTH)
        assert r.status_code == 201, r.text
        total = client.get("/v1/images", params={"limit": 500}).json()
        ids = [item["id"] for item in total["images"]]
    assert len(ids) == total["total"] and len(ids) > 3
    target = tmp_path / "elsewhere"
    if how == "cp -a":
        subprocess.run(["cp", "-a", str(sqlite_collection.directory), str(target)], check=True)
        shutil.rmtree(sqlite_collection.directory)  # nothing may still be read from the original
    else:
        shutil.move(sqlite_collection.directory, target)
    fixture = dataclasses.replace(sqlite_collection, directory=target)
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
