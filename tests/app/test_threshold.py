"""min_score on every search route, and the calibrated same_class_probability per result."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from models import read_checkpoint_meta
from msir_core.retrieval.calibration import Calibration, calibration_path
from tests.app.helpers import Fixture

# Any non-decreasing map will do: the service must answer exactly what it gives.
STEPS = (np.array([-1.0, 0.0, 0.5, 0.9, 1.0]), np.array([0.0, 0.05, 0.3, 0.8, 0.95]))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> tuple[Path, Calibration]:
    """A copy of the fixture checkpoint with a calibration file beside it."""
    folder = tmp_path_factory.mktemp("calibrated")
    for suffix in (".json", ".safetensors"):
        shutil.copy(checkpoint.with_suffix(suffix), folder / f"tiny{suffix}")
    weights = folder / "tiny.safetensors"
    calibration = Calibration(*STEPS, read_checkpoint_meta(weights).weights_sha256)
    calibration.save(calibration_path(weights))
    return weights, calibration


@pytest.fixture(scope="module")
def calibrated_client(shared_collection: Fixture, calibrated: tuple[Path, Calibration]) -> Iterator[TestClient]:
    with TestClient(create_app(shared_collection.settings(checkpoint=calibrated[0]))) as c:
        yield c


def query_bytes(fixture: Fixture) -> bytes:
    return fixture.image_paths["green"][2].read_bytes()


def post_search(client: TestClient, data: bytes, **form: object) -> dict:
    response = client.post("/v1/search", files={"image": ("q.png", data, "image/png")}, data=form)
    assert response.status_code == 200, response.text
    return response.json()


def test_min_score_drops_the_results_below_it_on_every_route(client: TestClient, shared_collection: Fixture) -> None:
    full = post_search(client, query_bytes(shared_collection), k=12)["neighbours"]
    # Cuts midway between two results: the answer's scores are rounded to 6 digits, a cut at one may not be.
    cut = (full[5]["score"] + full[6]["score"]) / 2
    expected = [n["id"] for n in full if n["score"] >= cut]
    assert 0 < len(expected) < len(full)
    assert [n["id"] for n in post_search(client, query_bytes(shared_collection), k=12, min_score=cut)["neighbours"]] \
        == expected  # fmt: skip

    batch = client.post(
        "/v1/search/batch",
        files=[("images", ("a.png", query_bytes(shared_collection), "image/png"))],
        data={"k": 12, "min_score": cut},
    )
    assert batch.status_code == 200, batch.text
    assert [n["id"] for n in batch.json()["results"][0]["neighbours"]] == expected

    first = full[0]["id"]
    vector = client.post("/v1/search/vector", json={"vector": [1.0] * 128, "k": 12}).json()["neighbours"]
    vcut = (vector[4]["score"] + vector[5]["score"]) / 2
    cut_vector = client.post("/v1/search/vector", json={"vector": [1.0] * 128, "k": 12, "min_score": vcut}).json()
    assert [n["id"] for n in cut_vector["neighbours"]] == [n["id"] for n in vector if n["score"] >= vcut]

    near = client.get(f"/v1/images/{first}/neighbours", params={"k": 12}).json()["neighbours"]
    ncut = (near[3]["score"] + near[4]["score"]) / 2
    cut_near = client.get(f"/v1/images/{first}/neighbours", params={"k": 12, "min_score": ncut}).json()["neighbours"]
    assert [n["id"] for n in cut_near] == [n["id"] for n in near if n["score"] >= ncut]
    # The kNN vote counts only what is returned.
    assert client.get(f"/v1/images/{first}/neighbours", params={"min_score": 1.0}).json()["knn_prediction"] in (
        None,
        {"labels": ["green"], "distribution": [{"label": "green", "probability": 1.0}], "neighbours_used": 1},
    )


@pytest.mark.parametrize("value", ["1.5", "-1.01", "nan", "high"])
def test_min_score_outside_minus_one_to_one_is_a_422_naming_the_field(
    client: TestClient, shared_collection: Fixture, value: str
) -> None:
    answers = [
        client.post(
            "/v1/search", files={"image": ("q.png", query_bytes(shared_collection))}, data={"min_score": value}
        ),
        client.get("/v1/images/1/neighbours", params={"min_score": value}),
    ]
    if value not in ("high", "nan"):  # JSON has no NaN
        body: object = float(value)
        answers.append(client.post("/v1/search/vector", json={"vector": [1.0] * 128, "min_score": body}))
    for response in answers:
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert "min_score" in error["message"]


def test_same_class_probability_is_the_calibration_of_the_score(
    calibrated_client: TestClient, calibrated: tuple[Path, Calibration], shared_collection: Fixture
) -> None:
    calibration = calibrated[1]
    body = post_search(calibrated_client, query_bytes(shared_collection), k=8)
    for n in body["neighbours"]:
        assert n["same_class_probability"] == pytest.approx(float(calibration([n["score"]])[0]), abs=1e-6)
    first = body["neighbours"][0]["id"]
    near = calibrated_client.get(f"/v1/images/{first}/neighbours", params={"k": 3}).json()["neighbours"]
    assert all(n["same_class_probability"] is not None for n in near)
    # Re-ranked scores are not cosines: the calibration does not apply to them.
    reranked = post_search(calibrated_client, query_bytes(shared_collection), k=8, rerank="aqe")
    assert all(n["same_class_probability"] is None for n in reranked["neighbours"])


def test_no_calibration_no_probability(client: TestClient, shared_collection: Fixture) -> None:
    body = post_search(client, query_bytes(shared_collection), k=3)
    assert all(n["same_class_probability"] is None for n in body["neighbours"])
