"""``msir-index eval``: retrieval metrics of a collection's stored embeddings, via ``msir_core.retrieval.metrics``.

Queries and database are the stored vectors of two splits (no image is decoded); labels come from the database,
mapped to the checkpoint's class order (labels it does not know are appended, sorted).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import CollectionError
from msir_core.retrieval.metrics import retrieval_metrics

if TYPE_CHECKING:
    from indexer.collection import Collection


def _encode(labels: list[list[str]], names: list[str], multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Label arrays for retrieval_metrics and the mask of rows that can be evaluated."""
    index = {name: i for i, name in enumerate(names)}
    if multi_label:
        hot = np.zeros((len(labels), len(names)), np.uint8)
        for row, row_labels in enumerate(labels):
            hot[row, [index[x] for x in row_labels]] = 1
        return hot, np.ones(len(labels), bool)
    usable = np.asarray([len(x) == 1 for x in labels], bool)
    single = np.asarray([index[x[0]] if len(x) == 1 else -1 for x in labels], np.int64)
    return single[usable], usable


def evaluate_collection(col: Collection, query_split: str, db_split: str, ks: list[int]) -> dict[str, Any]:
    q_ids, q_vecs, q_labels = col.store.labelled_embeddings(query_split)
    d_ids, d_vecs, d_labels = col.store.labelled_embeddings(db_split)
    splits = sorted(col.store.summary()["splits"])
    for name, ids in ((query_split, q_ids), (db_split, d_ids)):
        if not len(ids):
            raise CollectionError(f"split {name!r} has no images in this collection; splits present: {splits}")
    names = col.embedder.class_names
    extra = sorted({x for row in q_labels + d_labels for x in row} - set(names))
    names = names + extra
    multi_label = col.embedder.multi_label or any(len(row) > 1 for row in q_labels + d_labels)
    ql, q_ok = _encode(q_labels, names, multi_label)
    dl, d_ok = _encode(d_labels, names, multi_label)
    if not q_ok.any() or not d_ok.any():
        raise CollectionError(f"no single-labelled images in split {query_split!r} or {db_split!r} to evaluate")
    metrics = retrieval_metrics(
        q_vecs[q_ok],
        ql,
        d_vecs[d_ok],
        dl,
        ks,
        multi_label=multi_label,
        exclude_self=query_split == db_split,
        query_ids=[str(i) for i in q_ids[q_ok]],
        db_ids=[str(i) for i in d_ids[d_ok]],
        class_names=names,
    )
    metrics.update(
        {
            "query_split": query_split,
            "db_split": db_split,
            "skipped_without_single_label": int((~q_ok).sum() + (~d_ok).sum()),
        }
    )
    return metrics
