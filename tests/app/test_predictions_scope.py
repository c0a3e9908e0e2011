"""A model whose classes are not the collection's labels never answers as if they were: its predictions are marked
as the model's own classes (``predictions_scope: "model"``) with the reason in /v1/collection, while the neighbours'
vote answers in the collection's labels; a model of the collection's own classes answers in them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import models
from app.main import create_app
from tests.app.helpers import CLASSES, Fixture, build_collection

FOREIGN = ["airplane", "ship", "truck"]  # a model trained on other data (say CIFAR-10) than the collection's


@pytest.fixture(scope="module")
def foreign_client(
    tmp_path_factory: pytest.TempPathFactory, image_files: dict[str, list[Path]]
) -> Iterator[TestClient]:
    torch.manual_seed(0)
    model = models.build("mscfnet2", len(FOREIGN), image_size=16)
    spec = models.PreprocessSpec(image_size=(16, 16), channels=3, resize="stretch")
    checkpoint = models.save_checkpoint(
        tmp_path_factory.mktemp("foreign") / "cifar", model, class_names=FOREIGN, preprocess=spec
    )
    directory = tmp_path_factory.mktemp("foreign-collection") / "collection"
    build_collection(directory, checkpoint, image_files, None)  # labels red/green/blue
    with TestClient(create_app(Fixture(directory, checkpoint, None, image_files).settings())) as c:
        yield c


def _upload(image_files: dict[str, list[Path]]) -> dict[str, tuple[str, bytes, str]]:
    path = image_files["red"][0]
    return {"image": (path.name, path.read_bytes(), "image/png")}


def test_foreign_classes_are_the_models_own(foreign_client: TestClient, image_files: dict[str, list[Path]]) -> None:
    info = foreign_client.get("/v1/collection").json()
    assert info["predictions_scope"] == "model"
    assert info["classes"] == FOREIGN and info["label_names"] == sorted(CLASSES)
    assert "not this collection's labels" in info["predictions_note"] and "airplane" in info["predictions_note"]

    body = foreign_client.post("/v1/search", files=_upload(image_files), data={"k": "5"}).json()
    assert body["predictions_scope"] == "model"
    assert {p["label"] for p in body["predictions"]} <= set(FOREIGN)
    assert set(body["knn_prediction"]["labels"]) <= set(CLASSES)  # the vote: the collection's labels

    classified = foreign_client.post("/v1/classify", files=_upload(image_files)).json()
    assert classified["predictions_scope"] == "model"
    batch = foreign_client.post("/v1/search/batch", files=[("images", _upload(image_files)["image"])]).json()
    assert batch["predictions_scope"] == "model"


def test_the_collections_own_classes(client: TestClient, image_files: dict[str, list[Path]]) -> None:
    info = client.get("/v1/collection").json()
    assert info["predictions_scope"] == "collection" and info["predictions_note"] is None
    body = client.post("/v1/search", files=_upload(image_files), data={"k": "5"}).json()
    assert body["predictions_scope"] == "collection"
    assert {p["label"] for p in body["predictions"]} <= set(CLASSES)
