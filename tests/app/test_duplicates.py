"""GET /v1/duplicates and search's collapse_duplicates, on the tiny real collection plus a re-encoded copy."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.app.helpers import AUTH, Fixture
from tests.indexer.test_duplicates import brute_groups


def stored_vectors(client: TestClient) -> tuple[np.ndarray, np.ndarray]:
    store = client.app.state.service.collection.store  # type: ignore[attr-defined]
    parts = list(store.iter_copy_descriptors())  # what near-duplicate groups compare
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def add_copy(client: TestClient, fixture: Fixture) -> tuple[int, int]:
    """A JPEG re-encode of a stored image: (original id, copy id)."""
    source = fixture.image_paths["red"][2]
    buffer = io.BytesIO()
    Image.open(source).convert("RGB").save(buffer, format="JPEG", quality=85)
    added = client.post("/v1/images", files={"images": ("copy.jpg", buffer.getvalue(), "image/jpeg")}, headers=AUTH)
    assert added.status_code == 201, added.text
    copy = added.json()["added"][0]["id"]
    page = client.get("/v1/images", params={"limit": 500}).json()["images"]
    sha = {im["id"]: im["sha256"] for im in page}
    original = next(i for i, s in sha.items() if s == hashlib.sha256(source.read_bytes()).hexdigest())
    return original, copy


def cosine(ids: np.ndarray, x: np.ndarray, a: int, b: int) -> float:
    """The cosine of the stored vectors of images ``a`` and ``b``."""
    row = {int(i): r for r, i in enumerate(ids)}
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(unit[row[a]] @ unit[row[b]])


def test_groups_paging_caching_and_refusals(make_client: Callable[..., TestClient], sqlite_collection: Fixture) -> None:
    client = make_client()
    original, copy = add_copy(client, sqlite_collection)
    ids, x = stored_vectors(client)
    threshold = round(cosine(ids, x, original, copy) - 1e-4, 6)
    expected = brute_groups(ids, x, threshold)

    everything = client.get("/v1/duplicates", params={"threshold": threshold, "limit": 100})
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert body["threshold"] == pytest.approx(threshold) and body["images"] == len(ids) and body["exact"]
    assert body["total_groups"] == len(expected) and body["next_offset"] is None
    assert {frozenset(m["id"] for m in g["members"]) for g in body["groups"]} == expected
    (mine,) = [g for g in body["groups"] if copy in {m["id"] for m in g["members"]}]
    assert original in {m["id"] for m in mine["members"]}
    assert mine["representative"] == min(m["id"] for m in mine["members"]) == mine["members"][0]["id"]
    first = mine["members"][0]
    assert first["score"] == pytest.approx(1.0, abs=1e-5) and first["thumbnail_url"].endswith("/thumbnail")
    assert all(m["score"] >= threshold - 1e-5 or len(mine["members"]) > 2 for m in mine["members"])
    assert body["grouped_images"] == sum(len(g) for g in expected)

    # Cached per index position: asking again computes nothing; a write makes the next answer fresh.
    derived = client.app.state.service.derived  # type: ignore[attr-defined]
    computed = derived.computed
    paged = client.get("/v1/duplicates", params={"threshold": threshold, "limit": 1}).json()
    assert derived.computed == computed
    assert len(paged["groups"]) == 1 and paged["next_offset"] == (1 if len(expected) > 1 else None)
    assert client.delete(f"/v1/images/{copy}", headers=AUTH).status_code == 204
    after = client.get("/v1/duplicates", params={"threshold": threshold, "limit": 100}).json()
    assert derived.computed == computed + 1
    assert copy not in {m["id"] for g in after["groups"] for m in g["members"]}

    for params, field in (({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"), ({"limit": 0}, "limit")):
        refused = client.get("/v1/duplicates", params=params)
        assert refused.status_code == 422 and field in refused.text


def test_search_collapses_duplicates(make_client: Callable[..., TestClient], sqlite_collection: Fixture) -> None:
    writer = make_client()
    original, copy = add_copy(writer, sqlite_collection)
    ids, x = stored_vectors(writer)
    threshold = cosine(ids, x, original, copy) - 1e-4
    client = make_client(duplicate_threshold=threshold)
    query = sqlite_collection.image_paths["red"][2].read_bytes()
    files = {"image": ("q.png", query, "image/png")}
    plain = client.post("/v1/search", files=files, data={"k": 8}).json()["neighbours"]
    plain_ids = [n["id"] for n in plain]
    assert {original, copy} <= set(plain_ids)  # the copy is among the nearest without collapsing
    collapsed = client.post("/v1/search", files=files, data={"k": 8, "collapse_duplicates": "true"}).json()
    kept = [n["id"] for n in collapsed["neighbours"]]
    groups = client.get("/v1/duplicates").json()
    assert groups["threshold"] == pytest.approx(threshold)
    group_of = {m["id"]: g["representative"] for g in groups["groups"] for m in g["members"]}
    keys = [group_of.get(i, i) for i in kept]
    assert len(keys) == len(set(keys)) == 8 and collapsed["k"] == 8
    assert kept[0] == plain_ids[0] and not ({original, copy} <= set(kept))
    # Every result left out shares its group with one that was kept.
    for i in plain_ids:
        assert i in kept or group_of.get(i, i) in keys
