"""training.evaluation.model_evaluation: the one model evaluation of msir-eval, msir-train and the reproduction."""

from __future__ import annotations

import numpy as np
import torch

from models import PreprocessSpec, build
from msir_core.retrieval.metrics import retrieval_metrics
from training.evaluation.classification import classification_metrics
from training.evaluation.model_evaluation import Embedded, embed_split, evaluate_checkpoint, evaluate_embedded

NAMES = ["a", "b", "c"]


def _split(rng: np.random.Generator, n: int) -> Embedded:
    labels = rng.integers(0, 3, n)
    centres = np.eye(3, 8, dtype=np.float32)
    emb = centres[labels] + 0.3 * rng.standard_normal((n, 8)).astype(np.float32)
    logits = np.eye(3, dtype=np.float32)[labels] * 2 + rng.standard_normal((n, 3)).astype(np.float32)
    return Embedded(emb, logits, labels, [f"id{i}" for i in range(n)])


def test_evaluate_embedded_is_classification_plus_retrieval() -> None:
    rng = np.random.default_rng(0)
    queries, database = _split(rng, 30), _split(rng, 60)
    timings: dict[str, float] = {}
    out = evaluate_embedded(queries, database, class_names=NAMES, multi_label=False, ks=(1, 5), timings=timings)
    assert out["classification"] == classification_metrics(queries.labels, queries.logits, class_names=NAMES)
    expected = retrieval_metrics(queries.embeddings, queries.labels, database.embeddings, database.labels, ks=(1, 5),
                                 class_names=NAMES, query_ids=queries.ids, db_ids=database.ids)  # fmt: skip
    assert out["retrieval"]["map_at_all"] == expected["map_at_all"]
    assert out["retrieval"]["precision_at_k"] == expected["precision_at_k"]
    assert set(timings) == {"classification_metrics", "retrieval_metrics"}


def test_same_object_is_leave_one_out_and_no_database_no_retrieval() -> None:
    rng = np.random.default_rng(1)
    split = _split(rng, 40)
    loo = evaluate_embedded(split, split, class_names=NAMES, multi_label=False)["retrieval"]
    copy = Embedded(split.embeddings.copy(), split.logits, split.labels, split.ids)
    with_self = evaluate_embedded(split, copy, class_names=NAMES, multi_label=False)["retrieval"]
    # Against a copy every query finds itself first: P@1 is 1; leave-one-out it is not.
    assert with_self["precision_at_k"]["1"] == 1.0 and loo["precision_at_k"]["1"] < 1.0
    assert "retrieval" not in evaluate_embedded(split, None, class_names=NAMES, multi_label=False)


def test_evaluate_checkpoint_embeds_then_evaluates() -> None:
    torch.manual_seed(0)
    model = build("cnn5", num_classes=3, in_channels=3, image_size=20)
    spec = PreprocessSpec(image_size=(20, 20), channels=3, resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (12, 3, 20, 20), dtype=np.uint8)
    labels = rng.integers(0, 3, 12)
    out = evaluate_checkpoint(model, spec, (images, labels), (images, labels), class_names=NAMES, multi_label=False,
                              batch_size=5, device=torch.device("cpu"), progress=False)  # fmt: skip
    e = embed_split(model, images, labels, spec, batch_size=5, device=torch.device("cpu"), progress=False)
    direct = evaluate_embedded(e, Embedded(e.embeddings.copy(), e.logits, labels), class_names=NAMES,
                               multi_label=False)  # fmt: skip
    assert out["classification"]["accuracy"] == direct["classification"]["accuracy"]
    assert out["retrieval"]["map_at_all"] == direct["retrieval"]["map_at_all"]
