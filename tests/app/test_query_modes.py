"""More ways to query: by embedding vector, several images in one request (one forward pass), and the paginated,
filterable listing of the collection's images; plus the one-trip path of a lone query."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.routes.search import MAX_BATCH_QUERIES
from indexer import Collection
from tests.app.helpers import PER_CLASS, Fixture, class_image, png_bytes


def stored(shared_collection: Fixture, image_id: int) -> list[float]:
    with Collection.open(shared_collection.directory, device="cpu") as col:
        vector = col.vector(image_id)
    assert vector is not None
    return [float(v) for v in vector]


def test_search_by_vector_matches_the_neighbours_endpoint(client: TestClient, shared_collection: Fixture) -> None:
    vector = stored(shared_collection, 5)
    body = client.post("/v1/search/vector", json={"vector": vector, "k": 4}).json()
    assert body["neighbours"][0]["id"] == 5 and body["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert body["predictions"] is None
    near = client.get("/v1/images/5/neighbours", params={"k": 3}).json()
    assert [n["id"] for n in body["neighbours"][1:]] == [n["id"] for n in near["neighbours"]]
    # Scale does not matter (the server normalises) and filters apply.
    scaled = client.post("/v1/search/vector", json={"vector": [3 * v for v in vector], "k": 4}).json()
    assert [n["id"] for n in scaled["neighbours"]] == [n["id"] for n in body["neighbours"]]
    blue = client.post("/v1/search/vector", json={"vector": vector, "k": 3, "labels": ["blue"], "split": "test"})
    assert all(n["labels"] == ["blue"] and n["split"] == "test" for n in blue.json()["neighbours"])
    # Any JSON number keeps its direction, even where float32 would make it 0 or inf; k may be written 4.0.
    for factor in (1e-300, 1e300):
        extreme = client.post("/v1/search/vector", json={"vector": [factor * v for v in vector], "k": 4.0})
        assert extreme.status_code == 200, extreme.text
        assert [n["id"] for n in extreme.json()["neighbours"]] == [n["id"] for n in body["neighbours"]]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"vector": [1.0, 2.0]}, "embedding_dim"),
        ({"vector": []}, "vector"),
        ({"vector": "abc"}, "vector"),
        ({"k": 3}, "vector"),
        ({"vector": [1.0], "extra": 1}, "extra"),
        ({"vector": ["1.0"]}, "vector"),  # strict: a string is not a number
        ({"vector": [1.0], "k": "4"}, "k"),
        ({"vector": [1.0], "k": True}, "k"),
    ],
)
def test_search_by_vector_rejects_bad_bodies(client: TestClient, body: dict, fragment: str) -> None:
    response = client.post("/v1/search/vector", json=body)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["error"]["message"]


def test_search_by_vector_rejects_a_zero_vector(client: TestClient) -> None:
    dim = client.get("/v1/collection").json()["embedding_dim"]
    response = client.post("/v1/search/vector", json={"vector": [0.0] * dim})
    assert response.status_code == 422 and "not all zero" in response.json()["error"]["message"]


def test_batch_search_answers_each_image_as_a_single_search_would(
    client: TestClient, shared_collection: Fixture
) -> None:
    paths = [shared_collection.image_paths[c][2] for c in ("red", "green", "blue")]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
    passes, images = batch_stats(client.get("/metrics").text)
    response = client.post("/v1/search/batch", files=files, data={"k": "4"})
    assert response.status_code == 200, response.text
    # One forward pass of three images.
    assert batch_stats(client.get("/metrics").text) == (passes + 1, images + 3)
    body = response.json()
    assert body["k"] == 4 and len(body["results"]) == 3
    for path, result in zip(paths, body["results"], strict=True):
        single = client.post("/v1/search", files={"image": ("q.png", path.read_bytes())}, data={"k": "4"}).json()
        assert [n["id"] for n in result["neighbours"]] == [n["id"] for n in single["neighbours"]]
        np.testing.assert_allclose(
            [n["score"] for n in result["neighbours"]], [n["score"] for n in single["neighbours"]], atol=1e-5
        )
        assert result["knn_prediction"]["labels"] == single["knn_prediction"]["labels"]


def batch_stats(metrics: str) -> tuple[float, float]:
    """(forward passes, images) of the batch-size histogram in /metrics."""
    values = {}
    for line in metrics.splitlines():
        for suffix in ("_count", "_sum"):
            if line.startswith(f"msir_inference_batch_size{suffix} "):
                values[suffix] = float(line.rsplit(" ", 1)[1])
    return values["_count"], values["_sum"]


def test_batch_search_errors_name_the_file(client: TestClient) -> None:
    good = png_bytes(class_image(0, 1))
    files = [("images", ("a.png", good, "image/png")), ("images", ("b.txt", b"not an image", "text/plain"))]
    response = client.post("/v1/search/batch", files=files)
    assert response.status_code == 415 and "images[1]" in response.json()["error"]["message"]
    too_many = [("images", (f"{i}.png", good, "image/png")) for i in range(MAX_BATCH_QUERIES + 1)]
    response = client.post("/v1/search/batch", files=too_many)
    assert response.status_code == 422 and response.json()["error"]["code"] == "too_many_images"


def test_listing_pages_through_every_image_with_filters(client: TestClient) -> None:
    seen: list[int] = []
    after = None
    while True:
        params = {"limit": 7} | ({"after": after} if after is not None else {})
        page = client.get("/v1/images", params=params).json()
        assert page["total"] == 3 * PER_CLASS
        seen += [i["id"] for i in page["images"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == sorted(seen) and len(set(seen)) == 3 * PER_CLASS
    red = client.get("/v1/images", params={"label": "red", "split": "test", "limit": 50}).json()
    assert red["total"] == 3 and {tuple(i["labels"]) for i in red["images"]} == {("red",)}
    assert red["next_after"] is None
    both = client.get("/v1/images", params=[("label", "red"), ("label", "blue")]).json()
    assert both["total"] == 2 * PER_CLASS
    assert set(red["images"][0]) >= {"id", "labels", "split", "sha256", "image_url", "thumbnail_url"}


@pytest.mark.parametrize(
    ("params", "status"), [({"limit": 0}, 422), ({"limit": 501}, 422), ({"after": -1}, 422), ({"label": "x"}, 422)]
)
def test_listing_rejects_bad_parameters(client: TestClient, params: dict, status: int) -> None:
    response = client.get("/v1/images", params=params)
    assert response.status_code == status, response.text


def test_a_lone_search_skips_the_batcher_and_concurrent_ones_share_it(shared_collection: Fixture) -> None:
    """Alone, a query is one trip to a worker thread (the batcher's model thread never runs); the batcher still
    coalesces queries that arrive while others are in flight (tests/app/test_concurrency.py checks the answers)."""
    from app.main import create_app

    with TestClient(create_app(shared_collection.settings())) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        query = png_bytes(class_image(1, 3))
        for _ in range(3):
            response = client.post("/v1/search", files={"image": ("q.png", query)}, data={"k": "3"})
            assert response.status_code == 200
        assert service.model.idle()
        assert service.model._executor._threads == set()  # the model thread was never started


def test_index_mmap_serves_the_same_answers_from_a_mapped_index(shared_collection: Fixture) -> None:
    """MSIR_INDEX_MMAP reaches the served collection: its index is mapped, and answers as the unmapped one."""
    from app.main import create_app

    vector = stored(shared_collection, 5)
    answers = []
    for mmap in (False, True):
        with TestClient(create_app(shared_collection.settings(index_mmap=mmap))) as c:
            assert c.app.state.service.collection.stats()["index"]["mmap"] is mmap  # type: ignore[attr-defined]
            answers.append(c.post("/v1/search/vector", json={"vector": vector, "k": 6, "labels": ["blue"]}).json())
    assert answers[0]["neighbours"] == answers[1]["neighbours"]
