"""POST /v1/explain on the tiny real collection (random-init mscfnet2 at 16 px: a 4x4 feature map)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.helpers import Fixture


def upload(fixture: Fixture) -> tuple[str, bytes, str]:
    return ("q.png", fixture.image_paths["red"][1].read_bytes(), "image/png")


def test_heat_maps_of_an_uploaded_query_sum_to_the_search_score(client: TestClient, shared_collection: Fixture) -> None:
    found = client.post("/v1/search", files={"image": upload(shared_collection)}, data={"k": 4}).json()["neighbours"]
    ids = [n["id"] for n in found]
    response = client.post("/v1/explain", files={"image": upload(shared_collection)}, data={"result_id": ids})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "decomposition" and body["exact"] is True
    assert [e["result_id"] for e in body["explanations"]] == ids
    for explanation, hit in zip(body["explanations"], found, strict=True):
        for side in ("query", "result"):
            heat = explanation[side]
            assert (heat["rows"], heat["cols"]) == (4, 4) and len(heat["values"]) == 4
            assert sum(map(sum, heat["values"])) == pytest.approx(explanation["score"], abs=1e-4)
        # The same image files, the same model: the explained score is the search's.
        assert explanation["score"] == pytest.approx(hit["score"], abs=1e-4)
    # The query is stored: against itself both maps are the same.
    itself = body["explanations"][0]
    assert np.allclose(itself["query"]["values"], itself["result"]["values"], atol=1e-6)


def test_a_stored_query_by_id(client: TestClient) -> None:
    response = client.get("/v1/images/1/explain", params={"result_id": [2, 3, 2]})
    assert response.status_code == 200, response.text
    assert [e["result_id"] for e in response.json()["explanations"]] == [2, 3]  # repeats explained once


@pytest.mark.parametrize(
    ("request_", "status", "field"),
    [
        ({"data": {}}, 422, "result_id"),  # nothing to explain
        ({"data": {"result_id": list(range(1, 102))}}, 422, "result_id"),  # more than 100
        ({"data": {"result_id": [-1]}}, 422, "result_id"),
        ({"data": {"result_id": [10**9]}}, 404, "1000000000"),  # no such image
        ({"data": {"result_id": ["one"]}}, 422, "result_id"),
    ],
)
def test_refusals_name_the_field(
    client: TestClient, shared_collection: Fixture, request_: dict, status: int, field: str
) -> None:
    response = client.post("/v1/explain", files={"image": upload(shared_collection)}, **request_)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]["message"]
    stored = client.get("/v1/images/1/explain", params={"result_id": request_["data"].get("result_id", [])})
    assert stored.status_code == status, stored.text
    assert field in stored.json()["error"]["message"]


def test_missing_query_image_and_stored_query(client: TestClient) -> None:
    assert client.post("/v1/explain", data={"result_id": [1]}).status_code == 422
    missing = client.get(f"/v1/images/{10**9}/explain", params={"result_id": [1]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_found"
