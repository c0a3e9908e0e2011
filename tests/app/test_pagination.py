"""GET /v1/images keyset pagination with an opaque cursor, on SQLite and PostgreSQL: every image that exists
throughout a walk is listed exactly once whatever is added or deleted meanwhile; a cursor the server did not write is
a 422 naming the field; the deprecated ``after`` still pages the same way."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.pagination import CURSOR_MAX_LENGTH, CURSOR_PATTERN, decode_cursor, encode_cursor
from tests.app.helpers import AUTH, CLASSES, PER_CLASS, Fixture, class_image, png_bytes

TOTAL = len(CLASSES) * PER_CLASS


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    """A fresh collection (the walk writes) with its rows in SQLite or in its own PostgreSQL database."""
    fixture: Fixture = request.getfixturevalue(f"{request.param}_collection")
    with TestClient(create_app(fixture.settings())) as c:
        yield c


def walk(client: TestClient, limit: int, **params: object) -> Iterator[dict]:
    cursor = None
    while True:
        page = client.get("/v1/images", params={"limit": limit, **params} | ({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        body = page.json()
        yield body
        cursor = body["next_cursor"]
        if cursor is None:
            return
        assert decode_cursor(cursor) == body["images"][-1]["id"] == body["next_after"]


def test_a_walk_is_stable_under_concurrent_inserts_and_deletes(db_client: TestClient) -> None:
    client = db_client
    seen: list[int] = []
    deleted: list[int] = []
    added: list[int] = []
    for n, page in enumerate(walk(client, 7)):
        seen += [i["id"] for i in page["images"]]
        if n == 1:
            # Delete one image already listed and one not yet reached; add one image.
            ahead = client.get("/v1/images", params={"limit": 1, "cursor": page["next_cursor"]}).json()["images"][0]
            for image_id in (seen[0], ahead["id"]):
                assert client.delete(f"/v1/images/{image_id}", headers=AUTH).status_code == 204
                deleted.append(image_id)
            files = {"images": ("new.png", png_bytes(class_image(0, 999)), "image/png")}
            answer = client.post("/v1/images", files=files, headers=AUTH)
            assert answer.status_code == 201, answer.text
            added += [a["id"] for a in answer.json()["added"]]
    assert len(seen) == len(set(seen)) and seen == sorted(seen), "no image twice, in id order"
    assert deleted[1] not in seen and set(added) <= set(seen)
    assert len(seen) == TOTAL - 1 + len(added)  # the not-yet-read deletion is skipped, the insertion listed


def test_cursor_and_after_page_alike_with_filters(db_client: TestClient) -> None:
    client = db_client
    by_cursor = [i["id"] for page in walk(client, 4, label="red") for i in page["images"]]
    by_after, after = [], None
    while True:
        page = client.get("/v1/images", params={"limit": 4, "label": "red"} | ({"after": after} if after else {}))
        by_after += [i["id"] for i in page.json()["images"]]
        if (after := page.json()["next_after"]) is None:
            break
    assert by_cursor == by_after and len(by_cursor) == PER_CLASS
    last = client.get("/v1/images", params={"limit": TOTAL + 1}).json()  # a full page may be followed by an empty one
    assert last["next_cursor"] is None and last["next_after"] is None and len(last["images"]) == TOTAL


@pytest.mark.parametrize(
    "cursor",
    [
        "a",  # not base64 (one character past a multiple of four)
        base64.urlsafe_b64encode(b"not json").decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"v":1,"id":-1}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"v":2,"id":5}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"v":1,"id":"5"}').decode().rstrip("="),
        base64.urlsafe_b64encode(b'{"v":1,"id":5,"x":0}').decode().rstrip("="),
        base64.urlsafe_b64encode(b"[5]").decode().rstrip("="),
        encode_cursor(5) + "=",  # padding is outside the pattern
        "x" * (CURSOR_MAX_LENGTH + 1),
    ],
)
def test_a_cursor_the_server_did_not_write_is_a_422_naming_the_field(client: TestClient, cursor: str) -> None:
    answer = client.get("/v1/images", params={"cursor": cursor})
    assert answer.status_code == 422, answer.text
    assert "cursor" in answer.json()["error"]["message"]


def test_cursor_with_after_is_refused(client: TestClient) -> None:
    answer = client.get("/v1/images", params={"cursor": encode_cursor(3), "after": 3})
    assert answer.status_code == 422 and answer.json()["error"]["code"] == "cursor_and_after"


def test_the_schema_states_the_cursor_exactly(client: TestClient) -> None:
    params = {p["name"]: p for p in client.get("/openapi.json").json()["paths"]["/v1/images"]["get"]["parameters"]}
    cursor = params["cursor"]["schema"]["anyOf"][0]
    assert cursor == {"type": "string", "minLength": 1, "maxLength": CURSOR_MAX_LENGTH, "pattern": CURSOR_PATTERN}
    assert params["after"]["deprecated"] is True
    # The longest id fits the stated bounds.
    assert len(encode_cursor(2**63 - 1)) <= CURSOR_MAX_LENGTH
