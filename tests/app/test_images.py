"""Stored files, thumbnails, adding and removing images."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from indexer import Collection
from tests.app.helpers import AUTH, BACKENDS, CLASSES, PER_CLASS, Fixture, class_image, png_bytes


@pytest.fixture(scope="module", params=BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """This module's tests run on both index backends (FAISS files; Milvus through milvus-lite)."""
    return str(request.param)


@pytest.fixture
def client(sqlite_collection: Fixture) -> Iterator[TestClient]:
    """These tests write: a fresh collection each."""
    with TestClient(create_app(sqlite_collection.settings())) as c:
        yield c


def test_get_image_serves_the_stored_file(client: TestClient, sqlite_collection: Fixture) -> None:
    r = client.get("/v1/images/1")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-content-type-options"] == "nosniff"
    with Collection.open(sqlite_collection.directory, device="cpu") as col:
        record = col.get(1)
    assert record is not None and record.path is not None
    assert r.content == record.path.read_bytes()
    assert hashlib.sha256(r.content).hexdigest() == record.sha256


def test_content_type_follows_the_file(client: TestClient) -> None:
    jpeg = png_bytes(class_image(1, 40, 30), "JPEG")
    added = client.post("/v1/images", files={"images": ("x.jpg", jpeg, "image/jpeg")}, headers=AUTH).json()
    image_id = added["added"][0]["id"]
    r = client.get(f"/v1/images/{image_id}")
    assert r.headers["content-type"] == "image/jpeg"
    assert r.content == jpeg


def test_thumbnail_is_cached_on_disk_by_sha256(client: TestClient, sqlite_collection: Fixture) -> None:
    r = client.get("/v1/images/2/thumbnail")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(r.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 192
    info = client.get("/v1/images/2/info").json()
    cached = list((sqlite_collection.directory / "thumbs").rglob(f"{info['sha256']}-*.jpg"))
    assert len(cached) == 1
    assert cached[0].read_bytes() == r.content
    mtime = cached[0].stat().st_mtime_ns
    assert client.get("/v1/images/2/thumbnail").content == r.content
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not re-rendered


def test_large_and_transparent_thumbnails(client: TestClient) -> None:
    big = png_bytes(class_image(2, 7, 40).resize((600, 400)))
    rgba = class_image(0, 9, 40).convert("RGBA")
    rgba.putalpha(128)
    r = client.post(
        "/v1/images",
        files=[("images", ("big.png", big, "image/png")), ("images", ("alpha.png", png_bytes(rgba), "image/png"))],
        headers=AUTH,
    )
    big_id, alpha_id = (a["id"] for a in r.json()["added"])
    thumb = Image.open(io.BytesIO(client.get(f"/v1/images/{big_id}/thumbnail").content))
    assert thumb.size == (192, 128)
    alpha = client.get(f"/v1/images/{alpha_id}/thumbnail")
    assert alpha.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(alpha.content)).mode == "RGBA"


def test_add_images_with_labels_split_and_metadata(client: TestClient) -> None:
    assert client.get("/v1/collection").json()["size"] == 3 * PER_CLASS
    files = [
        ("images", ("one.png", png_bytes(class_image(0, 100)), "image/png")),
        ("images", ("two.png", png_bytes(class_image(1, 100)), "image/png")),
    ]
    data = {"labels": ["red", "green|blue"], "split": "user", "metadata": json.dumps([{"a": 1}, {"b": "x"}])}
    r = client.post("/v1/images", files=files, data=data, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [a["filename"] for a in body["added"]] == ["one.png", "two.png"]
    assert body["duplicates"] == [] and body["failures"] == []
    first, second = (client.get(f"/v1/images/{a['id']}/info").json() for a in body["added"])
    assert first["labels"] == ["red"] and second["labels"] == ["green", "blue"]
    assert first["split"] == "user"
    assert first["metadata"]["a"] == 1 and second["metadata"]["b"] == "x"
    assert "path" not in first and "uri" not in first
    # Searchable straight away, and counted.
    found = client.post(
        "/v1/search", files={"image": ("q.png", png_bytes(class_image(0, 100)), "image/png")}, data={"k": 1}
    ).json()
    assert found["neighbours"][0]["id"] == body["added"][0]["id"]
    assert client.get("/v1/collection").json()["size"] == 3 * PER_CLASS + 2


def test_add_reports_duplicates_and_failures_without_losing_the_good_ones(
    client: TestClient, sqlite_collection: Fixture
) -> None:
    existing = sqlite_collection.image_paths["blue"][0].read_bytes()
    fresh = png_bytes(class_image(2, 200))
    files = [
        ("images", ("again.png", existing, "image/png")),
        ("images", ("fresh.png", fresh, "image/png")),
        ("images", ("fresh-copy.png", fresh, "image/png")),
        ("images", ("notes.txt", b"not an image", "text/plain")),
        ("images", ("empty.png", b"", "image/png")),
    ]
    r = client.post("/v1/images", files=files, headers=AUTH)
    assert r.status_code == 201, r.text
    body = r.json()
    assert [a["filename"] for a in body["added"]] == ["fresh.png"]
    new_id = body["added"][0]["id"]
    dups = {d["filename"]: d["existing_id"] for d in body["duplicates"]}
    assert dups["fresh-copy.png"] == new_id
    assert client.get(f"/v1/images/{dups['again.png']}/info").json()["labels"] == ["blue"]
    reasons = {f["filename"]: f["reason"] for f in body["failures"]}
    assert set(reasons) == {"notes.txt", "empty.png"}
    assert "Pillow" in reasons["notes.txt"] and "0 bytes" in reasons["empty.png"]
    # Only duplicates: 200; only failures: 422.
    again = client.post("/v1/images", files=[("images", ("f.png", fresh, "image/png"))], headers=AUTH)
    assert again.status_code == 200 and again.json()["duplicates"][0]["existing_id"] == new_id
    bad = client.post("/v1/images", files=[("images", ("n.txt", b"nope", "text/plain"))], headers=AUTH)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "no_images_added"


@pytest.mark.parametrize(
    ("data", "mentions"),
    [
        ({"labels": ["red", "green"]}, "labels"),
        ({"metadata": "{not json"}, "metadata"),
        ({"metadata": "[1, 2]"}, "metadata"),
        ({"split": "x" * 65}, "split"),
    ],
)
def test_add_validation(client: TestClient, data: dict, mentions: str) -> None:
    files = [("images", ("one.png", png_bytes(class_image(0, 300)), "image/png"))]
    r = client.post("/v1/images", files=files, data=data, headers=AUTH)
    assert r.status_code == 422, r.text
    assert mentions in r.json()["error"]["message"]
    assert client.get("/v1/collection").json()["size"] == 3 * PER_CLASS  # nothing half-added


def test_add_needs_images(client: TestClient) -> None:
    r = client.post("/v1/images", data={"split": "x"}, headers=AUTH)
    assert r.status_code == 422 and "'images'" in r.json()["error"]["message"]


def test_delete(client: TestClient, sqlite_collection: Fixture) -> None:
    assert client.get("/v1/collection").json()["labels"]["red"] == PER_CLASS
    thumb = client.get("/v1/images/3/thumbnail")
    assert thumb.status_code == 200
    assert client.delete("/v1/images/3", headers=AUTH).status_code == 204
    for path in ("/v1/images/3", "/v1/images/3/thumbnail", "/v1/images/3/neighbours"):
        assert client.get(path).status_code == 404
    assert client.delete("/v1/images/3", headers=AUTH).status_code == 404
    neighbours = client.get("/v1/images/4/neighbours", params={"k": 50}).json()["neighbours"]
    assert 3 not in [n["id"] for n in neighbours]
    assert len(neighbours) == 3 * PER_CLASS - 2
    assert client.get("/v1/collection").json()["labels"]["red"] == PER_CLASS - 1
    assert not list((sqlite_collection.directory / "thumbs").rglob("*.jpg"))
    assert sorted(client.get("/v1/collection").json()["classes"]) == sorted(CLASSES)
