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
    response = client.post("/v1/explain", data={"query_id": 1, "result_id": [2, 3]})
    assert response.status_code == 200, response.text
    assert [e["result_id"] for e in response.json()["explanations"]] == [2, 3]


@pytest.mark.parametrize(
    ("form", "with_file", "status", "field"),
    [
        ({"result_id": [1]}, False, 422, "query_id"),  # no query at all
        ({"result_id": [1], "query_id": 2}, True, 422, "query_id"),  # two queries
        ({"query_id": 1}, False, 422, "result_id"),  # nothing to explain
        ({"query_id": 1, "result_id": list(range(1, 200))}, False, 422, "result_id"),  # more than MSIR_MAX_K
        ({"query_id": 1, "result_id": [10**9]}, False, 404, "10000000"),  # no such image
        ({"query_id": "one", "result_id": [1]}, False, 422, "query_id"),
    ],
)
def test_refusals_name_the_field(
    client: TestClient, shared_collection: Fixture, form: dict, with_file: bool, status: int, field: str
) -> None:
    files = {"image": upload(shared_collection)} if with_file else None
    response = client.post("/v1/explain", data=form, files=files)
    assert response.status_code == status, response.text
    assert field in response.json()["error"]["message"]
