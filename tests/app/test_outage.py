"""A database outage: /readyz and DB-bound requests answer 503 + Retry-After, and the service recovers by itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.helpers import AUTH, Fixture, build_collection, class_image, png_bytes

QUERY = png_bytes(class_image(1, 7))


def _search(client: TestClient):  # type: ignore[no-untyped-def]
    return client.post("/v1/search", files={"image": ("q.png", QUERY, "image/png")}, data={"k": "4"})


def check_outage_and_recovery(client: TestClient, go_down: Callable[[], None], come_back: Callable[[], None]) -> None:
    before = _search(client)
    assert before.status_code == 200
    assert client.get("/readyz").status_code == 200
    new_image = png_bytes(class_image(2, 321))
    uploads = client.app.state.service.collection.directory / "uploads"  # type: ignore[attr-defined]
    files_before = sorted(p for p in uploads.rglob("*") if p.is_file())

    go_down()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["retry-after"] == "7"
    assert ready.json()["error"]["code"] == "database_unavailable"
    # A search may answer from rows the change feed's follower confirmed (indexer.row_cache) until its next check
    # fails, within the sync interval; from then on it answers as the database does.
    collection = client.app.state.service.collection  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while collection.confirmed_head() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collection.confirmed_head() is None
    for response in (
        _search(client),
        client.get("/v1/images/2"),
        client.get("/v1/images/2/neighbours"),
        client.get("/v1/collection"),
        client.post("/v1/images", files={"images": ("n.png", new_image, "image/png")}, headers=AUTH),
    ):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "database_unavailable"
    # The refused upload left no file behind (written aside, removed when the add failed).
    assert sorted(p for p in uploads.rglob("*") if p.is_file()) == files_before
    # What needs no database keeps working.
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/classify", files={"image": ("q.png", QUERY, "image/png")}).status_code == 200

    come_back()
    assert client.get("/readyz").status_code == 200
    after = _search(client)
    assert after.status_code == 200
    assert [n["id"] for n in after.json()["neighbours"]] == [n["id"] for n in before.json()["neighbours"]]
    # The refused write was not half-applied: retrying it adds the image once.
    retry = client.post("/v1/images", files={"images": ("n.png", new_image, "image/png")}, headers=AUTH)
    assert retry.status_code == 201, retry.text
    assert len(retry.json()["added"]) == 1


def test_sqlite_outage(tmp_path: Path, checkpoint: Path, image_files: dict[str, list[Path]]) -> None:
    db_dir = tmp_path / "db"
    url = f"sqlite:///{db_dir / 'metadata.db'}"
    build_collection(tmp_path / "collection", checkpoint, image_files, url)
    fixture = Fixture(tmp_path / "collection", checkpoint, url, image_files)
    with TestClient(create_app(fixture.settings(retry_after_s=7))) as client:
        engine = client.app.state.service.collection.store.engine  # type: ignore[attr-defined]

        def go_down() -> None:
            # The database file disappears (unmounted volume): new connections cannot open it.
            db_dir.rename(tmp_path / "db-away")
            engine.dispose()

        def come_back() -> None:
            (tmp_path / "db-away").rename(db_dir)

        check_outage_and_recovery(client, go_down, come_back)


@pytest.mark.postgres
def test_postgres_outage(postgres_url: str, postgres_collection: Fixture) -> None:
    name = sa.make_url(postgres_collection.database_url or "").database
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")

    def go_down() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(
                sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
            )

    def come_back() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))

    try:
        with TestClient(create_app(postgres_collection.settings(retry_after_s=7))) as client:
            check_outage_and_recovery(client, go_down, come_back)
    finally:
        come_back()
        admin.dispose()
