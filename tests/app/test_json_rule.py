"""One JSON rule for metadata on every database and route (issue #23): non-finite numbers are refused with a 422
naming the field on upload and PATCH, on SQLite and PostgreSQL alike (PostgreSQL used to answer 500); oversized
metadata gets a 422 naming the limit; an over-long file name a 4xx naming the field and the limit; an unknown
``split`` filter a 422 like an unknown label."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.app.helpers import AUTH, Fixture, class_image, png_bytes

NON_FINITE = ['{"a": 1e999}', '{"a": -1e999}', '{"a": NaN}', '{"a": Infinity}', '{"a": {"b": [1, -Infinity]}}']


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    fixture: Fixture = request.getfixturevalue(f"{request.param}_collection")
    with TestClient(create_app(fixture.settings(max_metadata_bytes=4096))) as client:
        yield client


def upload(client: TestClient, seed: int, metadata: str | None = None, filename: str = "a.png") -> object:
    data: dict[str, str] = {"metadata": metadata} if metadata is not None else {}
    image = png_bytes(class_image(seed % 3, 50 + seed))
    return client.post("/v1/images", files={"images": (filename, image, "image/png")}, data=data, headers=AUTH)


def test_non_finite_metadata_is_refused_on_upload_and_patch(db_client: TestClient) -> None:
    for i, text in enumerate(NON_FINITE):
        r = upload(db_client, i, text)
        assert r.status_code == 422, (text, r.status_code, r.text)
        error = r.json()["error"]
        assert "metadata" in error["message"] and "non-finite" in error["message"], error
    added = upload(db_client, 99, '{"a": 1.5}')
    assert added.status_code == 201, added.text
    image_id = added.json()["added"][0]["id"]
    for text in NON_FINITE:
        body = '{"metadata": ' + text + "}"
        r = db_client.patch(
            f"/v1/images/{image_id}", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert r.status_code == 422, (text, r.status_code, r.text)
        assert "metadata.a" in r.json()["error"]["message"], r.json()
    # Nothing was stored by the refused edits.
    stored = db_client.get(f"/v1/images/{image_id}/info")
    assert stored.status_code == 200 and stored.json()["metadata"]["a"] == 1.5, stored.text


def test_oversized_metadata_gets_422_naming_the_limit(db_client: TestClient) -> None:
    big = json.dumps({"a": "x" * 2_000_000})  # over Starlette's own 1 MB cap on a form field
    for text in (big, json.dumps({"a": "x" * 5000})):
        r = upload(db_client, 1, text)
        assert r.status_code == 422, (r.status_code, r.text[:300])
        assert "MSIR_MAX_METADATA_BYTES" in r.json()["error"]["message"]
    added = upload(db_client, 2)
    assert added.status_code == 201, added.text
    image_id = added.json()["added"][0]["id"]
    r = db_client.patch(f"/v1/images/{image_id}", json={"metadata": {"a": "x" * 5000}}, headers=AUTH)
    assert r.status_code == 422 and "MSIR_MAX_METADATA_BYTES" in r.json()["error"]["message"], r.text


def test_over_long_file_names_name_the_field_and_the_limit(db_client: TestClient) -> None:
    r = upload(db_client, 3, filename="n" * 2000 + ".png")
    assert r.status_code == 422, r.text
    assert "images" in r.json()["error"]["message"] and "1,024 characters" in r.json()["error"]["message"]
    # Longer than a multipart part header may be: the parser refuses it, and the answer says why.
    r = upload(db_client, 4, filename="n" * 5000 + ".png")
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "'images'" in message and "4,096 bytes" in message, message


def test_unknown_split_is_refused_like_an_unknown_label(db_client: TestClient) -> None:
    query = {"image": ("q.png", png_bytes(class_image(0, 4)), "image/png")}
    r = db_client.post("/v1/search", files=query, data={"split": "nope"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_split", r.text
    assert "train" in r.json()["error"]["message"]
    assert db_client.post("/v1/search", files=query, data={"split": "train"}).status_code == 200
    assert db_client.get("/v1/images", params={"split": "nope"}).status_code == 422
    assert db_client.get("/v1/images", params={"split": "test"}).status_code == 200
