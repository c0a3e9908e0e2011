"""Plots and Markdown report: every PNG is written and is a real, non-trivial image."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.evaluation import classification_metrics, retrieval_metrics
from training.evaluation.reports import (
    plot_classification_per_class,
    plot_precision_at_k,
    plot_retrieval_per_class,
    write_markdown_report,
    write_plots,
)


def _check_png(path: Path) -> None:
    assert path.is_file(), path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert width >= 300 and height >= 200, (path, img.size)
    # A blank or single-colour canvas would have almost no spread.
    assert pixels.std() > 5, path
    assert len(np.unique(pixels)) > 10, path


def _fake_run(rng: np.random.Generator, num_classes: int, multi_label: bool):
    names = [f"class_{c}_{'x' * (c % 7)}" for c in range(num_classes)]
    n_q, n_db = 8 * num_classes, 20 * num_classes
    centres = rng.normal(size=(num_classes, 16))
    if multi_label:
        yq = (rng.random((n_q, num_classes)) < 0.3).astype(np.uint8)
        ydb = (rng.random((n_db, num_classes)) < 0.3).astype(np.uint8)
        q, db = yq @ centres + rng.normal(size=(n_q, 16)), ydb @ centres + rng.normal(size=(n_db, 16))
        logits = 2.0 * (2 * yq.astype(np.float64) - 1) + rng.normal(size=yq.shape)
    else:
        yq, ydb = rng.integers(0, num_classes, n_q), rng.integers(0, num_classes, n_db)
        q, db = centres[yq] + rng.normal(size=(n_q, 16)), centres[ydb] + rng.normal(size=(n_db, 16))
        logits = rng.normal(size=(n_q, num_classes))
        logits[np.arange(n_q), yq] += 2.0
    thresholds = [0.4 + 0.01 * c for c in range(num_classes)] if multi_label else None
    cls = classification_metrics(yq, logits, multi_label=multi_label, class_names=names, thresholds=thresholds)
    ret = retrieval_metrics(q, yq, db, ydb, ks=(1, 5, 10, 50), multi_label=multi_label, class_names=names)
    return yq, logits, cls, ret


@pytest.mark.parametrize(("num_classes", "multi_label"), [(10, False), (100, False), (14, True)])
def test_every_plot_and_the_report(tmp_path: Path, num_classes: int, multi_label: bool) -> None:
    rng = np.random.default_rng(num_classes)
    y, logits, cls, ret = _fake_run(rng, num_classes, multi_label)
    plots = write_plots(tmp_path / "plots", classification=cls, retrieval=ret, y_true=y, scores=logits)
    expected = {"classification_per_class", "roc_curves", "retrieval_per_class", "precision_at_k"}
    if not multi_label:
        expected.add("confusion_matrix")
    assert set(plots) == expected
    for path in plots.values():
        _check_png(path)

    report = write_markdown_report(
        {
            "run": {"checkpoint": "runs/x.safetensors", "dataset": "toy"},
            "classification": cls,
            "retrieval": ret,
        },
        tmp_path / "report.md",
        plots,
    )
    text = report.read_text()
    assert "## Classification" in text and "## Retrieval" in text
    assert "class_99" in text if num_classes == 100 else "class_9" in text
    # Every embedded image resolves relative to the report.
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == len(plots)
    for link in links:
        assert (report.parent / link).is_file()


def test_side_by_side_models(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    _, _, cls_a, ret_a = _fake_run(rng, 10, False)
    _, _, cls_b, ret_b = _fake_run(rng, 10, False)
    for path in (
        plot_classification_per_class({"MSCFNet": cls_a, "ViT": cls_b}, tmp_path / "cls.png"),
        plot_retrieval_per_class({"MSCFNet": ret_a, "ViT": ret_b}, tmp_path / "ret.png", k=5),
        plot_precision_at_k({"MSCFNet": ret_a, "ViT": ret_b}, tmp_path / "pk.png"),
    ):
        _check_png(path)
