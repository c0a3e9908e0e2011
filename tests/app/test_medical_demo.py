"""The dermatology demo end to end (`make demo-isic`): ISIC 2018 training images indexed with the shipped
multi-scale ViT, a dermoscopy query answered with diagnoses, class probabilities and the classes' full names.

Runs only when the shared ISIC 2018 tar is beside the clone (tests never depend on ../shared): a subset of it is
copied, in its own layout, into a temporary folder.
"""

from __future__ import annotations

import csv
import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import quickstart as demo
from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TAR = REPO.parent / "shared" / "datasets" / "isic2018_task3_64px.tar"
CHECKPOINT = REPO / "demo" / "isic2018" / "msvit_isic2018.safetensors"
PER_CLASS = 6

pytestmark = [
    pytest.mark.skipif(not TAR.is_file(), reason=f"the ISIC 2018 set is not beside the clone ({TAR})"),
    pytest.mark.skipif(not CHECKPOINT.is_file(), reason=f"the shipped ISIC checkpoint {CHECKPOINT} is absent"),
]


def _subset(root: Path) -> tuple[Path, Path]:
    """PER_CLASS training images of every diagnosis + one test image, with the CSVs cut to them."""
    with tarfile.open(TAR) as tar:
        prefix = "isic2018_task3_64px/"
        labels = list(csv.DictReader(io.TextIOWrapper(tar.extractfile(prefix + "labels.csv"), "utf-8")))  # type: ignore[arg-type]
        taken: Counter[str] = Counter()
        chosen = []
        for row in labels:
            if row["split"] == "train" and taken[row["label"]] < PER_CLASS:
                taken[row["label"]] += 1
                chosen.append(row["id"])
        query = next(r for r in labels if r["split"] == "test" and r["label"] == "MEL")["id"]
        keep = set(chosen)
        for name in ("ISIC2018_Task3_Training_GroundTruth.csv", "HAM10000_metadata.csv"):
            text = tar.extractfile(prefix + name).read().decode()  # type: ignore[union-attr]
            lines = text.splitlines()
            kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[1 if name[0] == "H" else 0] in keep]
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("\n".join(kept) + "\n", encoding="utf-8")
        test_lines = tar.extractfile(prefix + "ISIC2018_Task3_Test_GroundTruth.csv").read().decode().splitlines()  # type: ignore[union-attr]
        (root / "ISIC2018_Task3_Test_GroundTruth.csv").write_text(
            "\n".join([test_lines[0], *(line for line in test_lines if line.startswith(query))]) + "\n"
        )
        (root / "images").mkdir()
        for image_id in [*chosen, query]:
            data = tar.extractfile(f"{prefix}images/{image_id}.jpg").read()  # type: ignore[union-attr]
            (root / "images" / f"{image_id}.jpg").write_bytes(data)
    return root, root / "images" / f"{query}.jpg"


def test_dermoscopy_query_returns_diagnoses_probabilities_and_full_names(tmp_path: Path) -> None:
    root, query = _subset(tmp_path / "isic")
    directory = demo.collection_dir_for(root, tmp_path / "var", "train")
    built = demo.prepare_collection(root, directory, CHECKPOINT, device="cpu", progress=False, split="train")
    assert (built.images, built.labelled) == (7 * PER_CLASS, True)
    settings = Settings(_env_file=None, collection_dir=directory, device="cpu", runtime="torch")  # type: ignore[call-arg]
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/collection").json()
        assert info["classes"] == ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
        assert info["class_descriptions"]["MEL"] == "melanoma"
        assert info["class_descriptions"]["NV"] == "melanocytic nevus"
        answer = client.post(
            "/v1/search", files={"image": ("q.jpg", query.read_bytes(), "image/jpeg")}, data={"k": "5"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
    assert len(body["neighbours"]) == 5
    assert all(n["labels"][0] in info["classes"] for n in body["neighbours"])  # each lesion with its diagnosis
    predictions = body["predictions"]  # the head's class probabilities, most likely first
    assert predictions and {p["label"] for p in predictions} <= set(info["classes"])
    values = [p["probability"] for p in predictions]
    assert values == sorted(values, reverse=True) and 0 < sum(values) <= 1 + 1e-6
    vote = body["knn_prediction"]["distribution"]  # the neighbours' diagnoses
    assert vote and {v["label"] for v in vote} <= set(info["classes"])
