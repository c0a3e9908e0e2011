"""msir-eval end to end on a tiny image folder and a freshly saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from typer.testing import CliRunner

from models import PreprocessSpec, build, load_checkpoint, save_checkpoint
from msir_data import open_dataset
from msir_data.cache import cached_split
from tests.fixtures_formats import write_image_folder
from training.evaluation import classification_metrics, retrieval_metrics
from training.evaluation.cli import app
from training.evaluation.embed import embed_arrays

CLASSES = ["cat", "dog", "eel"]
SPEC = PreprocessSpec(image_size=(20, 20), channels=3, resize="stretch", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
PLOTS = [
    "classification_per_class",
    "confusion_matrix",
    "roc_curves",
    "retrieval_per_class",
    "precision_at_k",
]


def _checkpoint(tmp_path: Path, classes: list[str]) -> Path:
    torch.manual_seed(0)
    model = build("cnn5", num_classes=len(classes), image_size=20)
    return save_checkpoint(tmp_path / "ckpt" / "toy", model, class_names=classes, preprocess=SPEC)


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_writes_metrics_report_and_plots_that_match_the_library(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", CLASSES, n=4, size=(20, 20))
    ckpt = _checkpoint(tmp_path, CLASSES)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, output = _run(
        "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--cache-dir", str(cache),
        "--workers", "0", "--batch-size", "5", "--ks", "1,3",
    )  # fmt: skip
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["query_split"] == "test (12 images)"
    assert metrics["retrieval"]["self_excluded"] is None

    # The same numbers straight from the library on the same cached arrays.
    reader = open_dataset("imagefolder", data)
    model = load_checkpoint(ckpt).model
    embedded = {}
    for split in ("test", "train"):
        cached = cached_split(reader, split, SPEC, cache, workers=0, progress=False)
        embedded[split] = (*embed_arrays(model, cached.images, SPEC, 5, progress=False), cached.labels)
    (q_emb, q_logits, q_labels), (db_emb, _, db_labels) = embedded["test"], embedded["train"]
    expected_cls = classification_metrics(q_labels, q_logits, class_names=CLASSES)
    expected_ret = retrieval_metrics(q_emb, q_labels, db_emb, db_labels, ks=(1, 3), class_names=CLASSES)
    assert metrics["classification"] == json.loads(json.dumps(expected_cls))
    assert metrics["retrieval"] == json.loads(json.dumps(expected_ret))

    for name in PLOTS:
        with Image.open(out / f"{name}.png") as img:
            assert img.format == "PNG" and min(img.size) > 200
    report = (out / "report.md").read_text()
    assert "## Classification" in report and "## Retrieval" in report
    assert all(f"({name}.png)" in report for name in PLOTS)


def test_limit_and_same_split_excludes_each_query_itself(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", CLASSES, n=4, size=(20, 20))
    out = tmp_path / "out"
    code, output = _run(
        "--checkpoint", str(_checkpoint(tmp_path, CLASSES)), "--data", str(data), "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--db-split", "test", "--limit", "7",
    )  # fmt: skip
    assert code == 0, output
    retrieval = json.loads((out / "metrics.json").read_text())["retrieval"]
    assert retrieval["num_queries"] == 7 and retrieval["num_database"] == 7
    assert retrieval["self_excluded"] == "by id"


def test_refuses_a_dataset_with_other_classes(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", CLASSES, n=2, size=(20, 20))
    code, output = _run(
        "--checkpoint", str(_checkpoint(tmp_path, ["cat", "dog", "fox"])), "--data", str(data),
        "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert code == 2
    assert "differ" in output and "fox" in output
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", CLASSES, n=1, size=(20, 20))
    code, output = _run("--checkpoint", str(tmp_path / "nope.safetensors"), "--data", str(data))
    assert code == 2
    assert "nope" in output


def test_single_split_folder_queries_the_trainers_held_out_images(tmp_path: Path) -> None:
    from training.splits import carve_test

    data = write_image_folder(tmp_path / "data", CLASSES, n=10, size=(20, 20), split_dirs=False)
    ckpt = _checkpoint(tmp_path, CLASSES)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, output = _run(
        "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--workers", "0",
    )  # fmt: skip
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    cached = cached_split(open_dataset("imagefolder", data), "all", SPEC, cache, workers=0, progress=False)
    pool, test_rows = carve_test(cached.labels, cached.item_ids, 0.2)
    assert metrics["run"]["query_split"] == f"all: held-out 0.2 ({len(test_rows)} images)"
    assert metrics["run"]["db_split"] == f"all: the rest ({len(pool)} images)"
    assert len(test_rows) == 6 and metrics["classification"]["num_samples"] == 6


def test_rerank_option_reaches_the_metrics(tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "data", CLASSES, n=4, size=(20, 20))
    ckpt = _checkpoint(tmp_path, CLASSES)
    out = tmp_path / "out"
    code, output = _run(
        "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
        "--workers", "0", "--rerank", "kreciprocal", "--rerank-shortlist", "6", "--rerank-k1", "3",
    )  # fmt: skip
    assert code == 0, output
    retrieval = json.loads((out / "metrics.json").read_text())["retrieval"]
    assert {k: v for k, v in retrieval["rerank"].items() if k != "database_seconds"} == {
        "method": "kreciprocal",
        "k1": 3,
        "k2": 6,
        "lambda_value": 0.3,
        "shortlist": 6,
    }
    code, output = _run("--checkpoint", str(ckpt), "--data", str(data), "--rerank", "bogus")
    assert code == 2 and "rerank must be one of" in " ".join(output.split())
