"""POST /v1/search/feedback: Rocchio over stored ids and uploads, the examples left out, refusals naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from msir_core.retrieval.feedback import rocchio
from tests.app.helpers import Fixture


def ids_by_label(client: TestClient) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for im in client.get("/v1/images", params={"limit": 500}).json()["images"]:
        out.setdefault(im["labels"][0], []).append(im["id"])
    return out


def vectors(client: TestClient, ids: list[int]) -> np.ndarray:
    found = client.app.state.service.collection.store.vectors(ids)  # type: ignore[attr-defined]
    return np.stack([found[i] for i in ids])


def vector_search(client: TestClient, vector: np.ndarray, k: int) -> list[int]:
    body = client.post("/v1/search/vector", json={"vector": vector.tolist(), "k": k}).json()
    return [n["id"] for n in body["neighbours"]]


def test_stored_examples_follow_rocchio(client: TestClient) -> None:
    by = ids_by_label(client)
    pos, neg = by["red"][:2], by["green"][:1]
    response = client.post(
        "/v1/search/feedback", data={"positive_id": [str(i) for i in pos], "negative_id": [str(neg[0])], "k": "6"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    got = [n["id"] for n in body["neighbours"]]
    expected = [i for i in vector_search(client, rocchio(vectors(client, pos), vectors(client, neg)), 12)]
    expected = [i for i in expected if i not in pos + neg][:6]
    assert got == expected and body["k"] == 6 and body["predictions"] is None
    assert not set(got) & set(pos + neg)
    # One positive id and nothing else is that image's neighbours.
    single = client.post("/v1/search/feedback", data={"positive_id": str(pos[0]), "k": "5"}).json()
    near = client.get(f"/v1/images/{pos[0]}/neighbours", params={"k": 5}).json()
    assert [n["id"] for n in single["neighbours"]] == [n["id"] for n in near["neighbours"]]
    # The weight moves the query: with w=1 the answer is the search for mean(P) - mean(N).
    heavy = client.post(
        "/v1/search/feedback",
        data={"positive_id": [str(i) for i in pos], "negative_id": str(neg[0]), "negative_weight": "1", "k": "4"},
    ).json()
    expected = vector_search(client, rocchio(vectors(client, pos), vectors(client, neg), 1.0), 10)
    assert [n["id"] for n in heavy["neighbours"]] == [i for i in expected if i not in pos + neg][:4]


def test_uploads_are_examples_too(client: TestClient, shared_collection: Fixture) -> None:
    path = shared_collection.image_paths["blue"][3]
    negative = shared_collection.image_paths["red"][0]
    files = [
        ("positive", ("p.png", path.read_bytes(), "image/png")),
        ("negative", ("n.png", negative.read_bytes(), "image/png")),
    ]
    response = client.post("/v1/search/feedback", files=files, data={"k": "5"})
    assert response.status_code == 200, response.text
    got = [n["id"] for n in response.json()["neighbours"]]
    service = client.app.state.service  # type: ignore[attr-defined]
    from models import open_image

    emb = service.collection.embedder.embed_images([open_image(path), open_image(negative)]).embeddings
    assert got == vector_search(client, rocchio(emb[:1], emb[1:]), 5)


@pytest.mark.parametrize(
    ("data", "field", "code"),
    [
        ({"k": "3"}, "positive_id", "validation_error"),
        ({"positive_id": "999999"}, "positive_id", "unknown_image"),
        ({"positive_id": "1", "negative_id": "1"}, "negative_id", "validation_error"),
        ({"positive_id": "1", "negative_weight": "2"}, "negative_weight", "validation_error"),
        ({"positive_id": [str(i) for i in range(1, 40)]}, "positive_id", "validation_error"),
        ({"positive_id": "-1"}, "positive_id", "validation_error"),
    ],
)
def test_refusals_name_the_field(client: TestClient, data: dict[str, object], field: str, code: str) -> None:
    response = client.post("/v1/search/feedback", data=data)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code and field in error["message"] + str(error.get("details"))
