"""GET /v1/map: a PCA map of the collection, cached per index position, sampled above MSIR_MAP_MAX_POINTS."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from msir_core.retrieval.projection import pca_2d
from tests.app.helpers import AUTH, CLASSES, PER_CLASS, Fixture, class_image, png_bytes


def test_map_points_labels_and_cache(make_client: Callable[..., TestClient], sqlite_collection: Fixture) -> None:
    client = make_client()
    body = client.get("/v1/map").json()
    total = len(CLASSES) * PER_CLASS
    assert body["method"] == "pca" and body["total"] == total and not body["sampled"]
    assert len(body["points"]) == total and len(body["explained_variance"]) == 2
    assert {p["label"] for p in body["points"]} == set(CLASSES)
    store = client.app.state.service.collection.store  # type: ignore[attr-defined]
    (ids, vectors), *_ = list(store.iter_embeddings())
    coords, _ = pca_2d(vectors)
    got = {p["id"]: (p["x"], p["y"]) for p in body["points"]}
    np.testing.assert_allclose([got[int(i)] for i in ids], coords, atol=1e-4)

    derived = client.app.state.service.derived  # type: ignore[attr-defined]
    computed = derived.computed
    assert client.get("/v1/map").json() == body  # cached: not computed again
    assert derived.computed == computed
    added = client.post(
        "/v1/images",
        files={"images": ("new.png", png_bytes(class_image(1, 99)), "image/png")},
        data={"labels": "green"},
        headers=AUTH,
    )
    assert added.status_code == 201, added.text
    new_id = added.json()["added"][0]["id"]
    after = client.get("/v1/map").json()
    assert derived.computed == computed + 1 and after["seq"] > body["seq"]
    assert new_id in {p["id"] for p in after["points"]} and after["total"] == total + 1


def test_large_collections_are_sampled(make_client: Callable[..., TestClient]) -> None:
    client = make_client(map_max_points=10)
    body = client.get("/v1/map").json()
    assert body["sampled"] and len(body["points"]) == 10 and body["total"] == len(CLASSES) * PER_CLASS
    assert client.get("/v1/map").json()["points"] == body["points"]
    ids = [p["id"] for p in body["points"]]
    assert ids == sorted(set(ids))
