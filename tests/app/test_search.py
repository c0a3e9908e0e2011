"""Search, neighbours, classify and collection endpoints against the tiny real collection."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from indexer import Collection
from tests.app.helpers import BACKENDS, CLASSES, PER_CLASS, Fixture, class_image, png_bytes


@pytest.fixture(scope="module", params=BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """This module's tests run on both index backends (FAISS files; Milvus through milvus-lite)."""
    return str(request.param)


def search(client: TestClient, data: bytes, **form: object) -> dict:
    response = client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data=form)
    assert response.status_code == 200, response.text
    return response.json()


def test_search_returns_the_documented_shape(client: TestClient, shared_collection: Fixture) -> None:
    query = shared_collection.image_paths["red"][0].read_bytes()
    body = search(client, query, k=5)
    assert body["k"] == 5
    assert len(body["neighbours"]) == 5
    first = body["neighbours"][0]
    assert set(first) == {
        "id", "score", "labels", "split", "metadata", "image_url", "thumbnail_url", "same_class_probability"
    }  # fmt: skip
    assert first["image_url"] == f"/v1/images/{first['id']}"
    assert first["thumbnail_url"] == f"/v1/images/{first['id']}/thumbnail"
    # The query itself is stored: it comes back first with cosine similarity 1.
    assert first["labels"] == ["red"] and first["score"] == pytest.approx(1.0, abs=1e-5)
    scores = [n["score"] for n in body["neighbours"]]
    assert scores == sorted(scores, reverse=True)
    assert set(body["timings"]) >= {"decode", "preprocess", "embed", "search", "database", "total"}
    assert all(v >= 0 for v in body["timings"].values())
    assert body["timings"]["total"] >= body["timings"]["embed"]


def test_search_predictions_are_a_softmax(client: TestClient, shared_collection: Fixture) -> None:
    body = search(client, shared_collection.image_paths["blue"][1].read_bytes(), k=3)
    probs = [p["probability"] for p in body["predictions"]]
    assert sorted(p["label"] for p in body["predictions"]) == sorted(CLASSES)
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-4)
    assert probs == sorted(probs, reverse=True)
    assert body["multi_label"] is False


def test_search_results_match_the_python_api(client: TestClient, shared_collection: Fixture) -> None:
    """The HTTP answer is what Collection.search gives for the same image (no invented ranking)."""
    path = shared_collection.image_paths["green"][4]
    body = search(client, path.read_bytes(), k=7)
    from models import open_image

    with Collection.open(shared_collection.directory, device="cpu") as col:
        emb = col.embedder.embed_images([open_image(path)]).embeddings
        hits = col.search(emb, 7)[0]
    assert [n["id"] for n in body["neighbours"]] == [h.id for h in hits]
    np.testing.assert_allclose([n["score"] for n in body["neighbours"]], [h.score for h in hits], atol=1e-5)


@pytest.mark.parametrize("method", ["aqe", "dba", "kreciprocal"])
def test_rerank_matches_the_python_api(client: TestClient, shared_collection: Fixture, method: str) -> None:
    from indexer import RerankConfig
    from models import open_image

    path = shared_collection.image_paths["blue"][2]
    body = search(client, path.read_bytes(), k=6, rerank=method)
    with Collection.open(shared_collection.directory, device="cpu") as col:
        emb = col.embedder.embed_images([open_image(path)]).embeddings
        hits = col.search(emb, 6, rerank=RerankConfig(method=method))[0]  # type: ignore[arg-type]
    assert [n["id"] for n in body["neighbours"]] == [h.id for h in hits]
    np.testing.assert_allclose([n["score"] for n in body["neighbours"]], [h.score for h in hits], atol=1e-5)
    scores = [n["score"] for n in body["neighbours"]]
    assert scores == sorted(scores, reverse=True)


def test_unknown_rerank_is_a_422_naming_the_field(client: TestClient, shared_collection: Fixture) -> None:
    data = shared_collection.image_paths["red"][0].read_bytes()
    response = client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data={"rerank": "magic"})
    assert response.status_code == 422
    assert "rerank" in response.text and "kreciprocal" in response.text


def test_knn_prediction_votes_from_the_neighbours(client: TestClient, shared_collection: Fixture) -> None:
    body = search(client, shared_collection.image_paths["red"][2].read_bytes(), k=5)
    labels = [n["labels"][0] for n in body["neighbours"]]
    winner = max(set(labels), key=labels.count)
    knn = body["knn_prediction"]
    assert knn["neighbours_used"] == 5
    assert knn["labels"] == [winner]
    dist = {d["label"]: d["probability"] for d in knn["distribution"]}
    assert dist[winner] == pytest.approx(labels.count(winner) / 5)


def test_label_and_split_filters(client: TestClient, shared_collection: Fixture) -> None:
    query = shared_collection.image_paths["red"][0].read_bytes()
    body = search(client, query, k=5, label="blue")
    assert len(body["neighbours"]) == 5
    assert all(n["labels"] == ["blue"] for n in body["neighbours"])
    # Several labels: repeated field or '|'.
    response = client.post(
        "/v1/search",
        files={"image": ("q.png", query, "image/png")},
        data={"k": "30", "label": ["blue", "green"]},
    )
    got = {n["labels"][0] for n in response.json()["neighbours"]}
    assert got == {"blue", "green"}
    body = search(client, query, k=50, split="test")
    assert len(body["neighbours"]) == 3 * 3  # 3 test images per class
    assert all(n["split"] == "test" for n in body["neighbours"])


def test_exclude_duplicates_drops_the_stored_copy(client: TestClient, shared_collection: Fixture) -> None:
    query = shared_collection.image_paths["green"][0].read_bytes()
    with_copy = search(client, query, k=3)
    without = search(client, query, k=3, exclude_duplicates="true")
    assert with_copy["neighbours"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert with_copy["neighbours"][0]["id"] not in [n["id"] for n in without["neighbours"]]
    assert [n["id"] for n in without["neighbours"]] == [n["id"] for n in with_copy["neighbours"][1:]] + [
        without["neighbours"][-1]["id"]
    ]


def test_default_k(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(default_k=4)
    data = png_bytes(class_image(0, 3))
    assert len(search(client, data)["neighbours"]) == 4


def test_neighbours_of_a_stored_image(client: TestClient) -> None:
    response = client.get("/v1/images/1/neighbours", params={"k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["id"] == 1
    assert body["query"]["labels"] == ["red"]
    assert "path" not in body["query"]  # no file system paths leave the server
    ids = [n["id"] for n in body["neighbours"]]
    assert len(ids) == 4 and 1 not in ids
    assert body["predictions"] is None
    assert body["knn_prediction"]["labels"]
    filtered = client.get("/v1/images/1/neighbours", params={"k": 4, "label": "green"}).json()
    assert all(n["labels"] == ["green"] for n in filtered["neighbours"])


def test_classify(client: TestClient) -> None:
    response = client.post("/v1/classify", files={"image": ("x.png", png_bytes(class_image(1, 0)), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["predictions"]) == len(CLASSES)
    assert math.fsum(p["probability"] for p in body["predictions"]) == pytest.approx(1.0, abs=1e-4)
    assert body["timings"]["embed"] > 0


def test_collection_info(client: TestClient, checkpoint) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/v1/collection").json()
    assert body["model"] == "mscfnet2"
    assert body["classes"] == CLASSES
    assert body["size"] == 3 * PER_CLASS
    assert body["embedding_dim"] == 128
    assert body["index_type"] == "flat"
    assert body["labels"] == {c: PER_CLASS for c in CLASSES}
    assert body["writes_enabled"] is True


def _counter(text: str, labels: str) -> float:
    match = re.search(r"^msir_http_requests_total\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    search_ok = 'method="POST",route="/v1/search",status="200"'
    # Route templates, not raw paths.
    missing = 'method="GET",route="/v1/images/{image_id}",status="404"'
    before = client.get("/metrics").text
    client.post("/v1/search", files={"image": ("q.png", png_bytes(class_image(2, 0)), "image/png")})
    client.get("/v1/images/999999")
    text = client.get("/metrics").text
    assert _counter(text, search_ok) == _counter(before, search_ok) + 1
    assert _counter(text, missing) == _counter(before, missing) + 1
    # No label holds the raw path (a float sample may well contain the digits 999999).
    assert "/v1/images/999999" not in text
    assert "msir_inference_seconds_count" in text
    assert f"msir_index_size {3 * PER_CLASS}.0" in text


def test_openapi_documents_v1_and_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v1/search", "/v1/classify", "/v1/images", "/v1/images/{image_id}", "/v1/collection"):
        assert path in paths
    assert "examples" in spec["components"]["schemas"]["SearchResponse"]


def test_docs_page_is_served_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    # Every asset the page loads comes from this server: /docs works on hosts without internet access.
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    assert client.get("/redoc").status_code == 404


@pytest.mark.parametrize("batch_max_size", [1, 8])
def test_batching_on_and_off_give_the_same_answer(shared_collection: Fixture, batch_max_size: int) -> None:
    data = shared_collection.image_paths["blue"][3].read_bytes()
    with TestClient(create_app(shared_collection.settings(batch_max_size=batch_max_size))) as c:
        body = search(c, data, k=6)
    with TestClient(create_app(shared_collection.settings(batch_max_size=1))) as c:
        reference = search(c, data, k=6)
    assert [n["id"] for n in body["neighbours"]] == [n["id"] for n in reference["neighbours"]]


def test_cors_only_for_configured_origins(make_client) -> None:  # type: ignore[no-untyped-def]
    client = make_client(cors_origins=["https://ui.example"])
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/search", headers=preflight)
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
    r = client.options("/v1/search", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_the_collection_is_served_from_the_backend_asked_for(
    client: TestClient, shared_collection: Fixture, index_backend: str
) -> None:
    """Guards the parametrisation: the milvus run really serves a Milvus collection (no FAISS file)."""
    manifest = json.loads((shared_collection.directory / "manifest.json").read_text())
    assert manifest["index"]["backend"] == index_backend
    assert (shared_collection.directory / "index.faiss").exists() == (index_backend == "faiss")
    assert (shared_collection.directory / "index.milvus.json").exists() == (index_backend == "milvus")
    assert client.get("/v1/collection").json()["size"] == len(CLASSES) * PER_CLASS
