"""One label contract: a collection's vocabulary is the labels stored in it (a class-per-folder tree built with
``--folder`` has its folder names), filters and the kNN vote use every stored label, and labels can be changed
after indexing through REST and the CLI without re-embedding."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.cli import app as cli_app
from tests.app.helpers import AUTH, Fixture, class_image, png_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from app.main import create_app

# None of these is one of the checkpoint's classes (red, green, blue).
FOLDERS = ["ship", "cat", "frog"]
runner = CliRunner()


def invoke(*args: str | Path) -> str:
    result = runner.invoke(cli_app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def folder_collection(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Fixture:
    root = tmp_path_factory.mktemp("tree")
    paths: dict[str, list[Path]] = {}
    for c, name in enumerate(FOLDERS):
        (root / name).mkdir()
        paths[name] = []
        for i in range(6):
            path = root / name / f"{i}.png"
            class_image(c, 40 + i).save(path)
            paths[name].append(path)
    directory = tmp_path_factory.mktemp("labelled") / "col"
    out = invoke("build", directory, "-c", checkpoint, "--folder", root, "--workers", "0", "--device", "cpu")
    assert "labels from the folder names: 3 class(es)" in out
    return Fixture(directory, checkpoint, None, paths)


@pytest.fixture(scope="module")
def client(folder_collection: Fixture) -> Iterator[TestClient]:
    with TestClient(create_app(folder_collection.settings(sync_interval_ms=0))) as c:
        yield c


def test_folder_build_records_folder_names(folder_collection: Fixture, tmp_path: Path, checkpoint: Path) -> None:
    stats = json.loads(invoke("stats", folder_collection.directory, "--json"))
    assert stats["labels"] == {name: 6 for name in FOLDERS}
    # A flat folder stays unlabelled, and the summary says so.
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        class_image(0, 90 + i).save(flat / f"{i}.png")
    out = invoke("build", tmp_path / "col", "-c", checkpoint, "--folder", flat, "--workers", "0", "--device", "cpu")
    assert "stored unlabelled" in out
    assert json.loads(invoke("stats", tmp_path / "col", "--json"))["labels"] == {"(unlabelled)": 3}


def test_unlabelled_collection_gets_labels_from_a_rerun(tmp_path: Path, checkpoint: Path) -> None:
    """A tree indexed as unlabelled images (by an older msir, or as plain files) is labelled by re-running the build
    with the tree: nothing is embedded again."""
    root = tmp_path / "tree"
    files = []
    for c, name in enumerate(FOLDERS[:2]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            class_image(c, i).save(root / name / f"{i}.png")
            files.append(root / name / f"{i}.png")
    directory = tmp_path / "col"
    invoke("build", directory, "-c", checkpoint, "--workers", "0", "--device", "cpu", "--folder", root / "ship")
    invoke("add", directory, *files[2:], "--workers", "0", "--device", "cpu")
    out = json.loads(
        invoke("build", directory, "-c", checkpoint, "--folder", root, "--workers", "0", "--device", "cpu", "--json")
    )
    assert out["added"] == 0 and out["already_present"] == 4 and out["labelled"] == 4
    stats = json.loads(invoke("stats", directory, "--json"))
    assert stats["labels"] == {"ship": 2, "cat": 2}


def test_filters_and_knn_use_stored_labels(client: TestClient, folder_collection: Fixture) -> None:
    info = client.get("/v1/collection").json()
    assert sorted(info["label_names"]) == sorted(FOLDERS) and info["classes"] == ["red", "green", "blue"]
    query = folder_collection.image_paths["ship"][0].read_bytes()
    r = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": "5", "label": "cat"})
    assert r.status_code == 200, r.text
    assert r.json()["neighbours"] and all(n["labels"] == ["cat"] for n in r.json()["neighbours"])
    r = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": "5"})
    vote = r.json()["knn_prediction"]
    assert vote["labels"] == ["ship"] and vote["neighbours_used"] == 5
    assert {d["label"] for d in vote["distribution"]} <= set(FOLDERS)
    # The classifier head still predicts the checkpoint's classes.
    assert {p["label"] for p in r.json()["predictions"]} <= {"red", "green", "blue"}
    bad = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"label": "red"})
    assert bad.status_code == 422
    message = bad.json()["error"]["message"]
    assert "red" in message and all(name in message for name in FOLDERS)


def test_relabel_through_rest_and_cli(client: TestClient, folder_collection: Fixture) -> None:
    query = png_bytes(class_image(2, 40))  # the first "frog" image, byte for byte as stored
    top = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"k": "1"})
    image_id = top.json()["neighbours"][0]["id"]
    body = {"labels": ["toad"], "metadata": {"reviewed": True}}
    assert client.patch(f"/v1/images/{image_id}", json=body).status_code == 401
    r = client.patch(f"/v1/images/{image_id}", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["toad"] and r.json()["metadata"]["reviewed"] is True
    found = client.post("/v1/search", files={"image": ("q.png", query, "image/png")}, data={"label": "toad"})
    assert [n["id"] for n in found.json()["neighbours"]] == [image_id]
    assert client.patch("/v1/images/999999", json=body, headers=AUTH).status_code == 404
    # {} changes nothing (a JSON merge patch no-op): the image as it is; an unknown id is still 404.
    same = client.patch(f"/v1/images/{image_id}", json={}, headers=AUTH)
    assert same.status_code == 200 and same.json() == r.json()
    assert client.patch("/v1/images/999999", json={}, headers=AUTH).status_code == 404
    # Strict types: 0 is not a boolean, a blank is not a label.
    assert client.patch(f"/v1/images/{image_id}", json={"replace_metadata": 0}, headers=AUTH).status_code == 422
    assert client.patch(f"/v1/images/{image_id}", json={"labels": ["  "]}, headers=AUTH).status_code == 422
    assert client.patch(f"/v1/images/{image_id}", json={"labels": ["a|b"]}, headers=AUTH).status_code == 422

    edit = ["--id", str(image_id), "--add", "amphibian", "--remove", "toad", "--json"]
    out = json.loads(invoke("label", folder_collection.directory, *edit))
    assert out == {"changed": [image_id], "not_found": []}
    info = client.get(f"/v1/images/{image_id}/info").json()
    assert info["labels"] == ["amphibian"] and info["metadata"]["reviewed"] is True
