"""Evaluation reports: the standard set of PNG plots and a Markdown report with tables and embedded plots.

``metrics`` is the dict written to ``metrics.json``: optional ``"run"`` (flat description: checkpoint,
dataset, splits...), ``"classification"`` (from :func:`classification_metrics`) and ``"retrieval"`` (from
:func:`retrieval_metrics`). The plotting functions live in :mod:`training.evaluation.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from training.evaluation.plots import (
    plot_classification_per_class,
    plot_confusion_matrix,
    plot_precision_at_k,
    plot_retrieval_per_class,
    plot_roc_curves,
)

__all__ = [
    "plot_classification_per_class",
    "plot_confusion_matrix",
    "plot_precision_at_k",
    "plot_retrieval_per_class",
    "plot_roc_curves",
    "write_markdown_report",
    "write_plots",
]

PLOT_TITLES = {
    "classification_per_class": "Per-class precision, recall and F1",
    "confusion_matrix": "Normalised confusion matrix",
    "roc_curves": "ROC curves",
    "retrieval_per_class": "Per-class retrieval",
    "precision_at_k": "Precision and recall at K",
}


def write_plots(
    out_dir: str | Path,
    *,
    classification: dict | None = None,
    retrieval: dict | None = None,
    y_true: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    scores_are_logits: bool = True,
) -> dict[str, Path]:
    """Every plot the given metrics allow, as ``{name: png path}``; ROC curves need y_true and scores."""
    out = Path(out_dir)
    plots: dict[str, Path] = {}
    if classification is not None:
        runs: dict[str, dict] = {"model": classification}
        title = "Per-class precision, recall and F1"
        if classification["task"] == "multi_label":
            title = "Per-label precision, recall and F1"
            runs = {"threshold 0.5": classification}
            if "tuned" in classification:
                runs["tuned thresholds"] = dict(classification, per_class=classification["tuned"]["per_class"])
        plots["classification_per_class"] = plot_classification_per_class(
            runs, out / "classification_per_class.png", title=title
        )
        if "confusion_matrix" in classification:
            plots["confusion_matrix"] = plot_confusion_matrix(classification, out / "confusion_matrix.png")
        if y_true is not None and scores is not None:
            plots["roc_curves"] = plot_roc_curves(
                y_true,
                scores,
                out / "roc_curves.png",
                class_names=classification["class_names"],
                multi_label=classification["task"] == "multi_label",
                scores_are_logits=scores_are_logits,
            )
    if retrieval is not None:
        plots["retrieval_per_class"] = plot_retrieval_per_class(retrieval, out / "retrieval_per_class.png")
        plots["precision_at_k"] = plot_precision_at_k(retrieval, out / "precision_at_k.png")
    return plots


def write_markdown_report(
    metrics: Mapping, path: str | Path, plots: Mapping[str, str | Path] | None = None, *, title: str = ""
) -> Path:
    """Write a Markdown report: run description, headline and per-class tables, links to the plots."""
    out = Path(path)
    lines = [f"# {title or 'Evaluation report'}", ""]
    run = metrics.get("run")
    if run:
        lines += [*_table(["run", ""], [[str(k), _text(v)] for k, v in run.items()]), ""]
    if "classification" in metrics:
        lines += _classification(metrics["classification"])
    if "retrieval" in metrics:
        lines += _retrieval(metrics["retrieval"])
    if plots:
        lines += ["## Plots", ""]
        for name, file in plots.items():
            link = Path(os.path.relpath(Path(file).resolve(), out.parent.resolve())).as_posix()
            lines += [f"### {PLOT_TITLES.get(name, name)}", "", f"![{name}]({link})", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return out


def _classification(m: Mapping) -> list[str]:
    lines = ["## Classification", ""]
    multi = m["task"] == "multi_label"
    lines.append(f"{m['num_samples']} samples, {m['num_classes']} {'labels' if multi else 'classes'}.")
    lines.append("")
    macro = m["macro"]
    if multi:
        rows = [
            ["macro AUC", _num(macro["auc"])],
            ["macro F1 @0.5", _num(macro["f1"])],
            ["micro F1 @0.5", _num(m["micro_f1"])],
            ["subset accuracy @0.5", _num(m["subset_accuracy"])],
        ]
        if "tuned" in m:
            rows += [
                ["macro F1 @tuned thresholds", _num(m["tuned"]["macro"]["f1"])],
                ["micro F1 @tuned thresholds", _num(m["tuned"]["micro_f1"])],
                ["subset accuracy @tuned thresholds", _num(m["tuned"]["subset_accuracy"])],
            ]
    else:
        rows = [["accuracy", _num(m["accuracy"])]] + [
            [f"macro {k}", _num(macro[k])] for k in ("precision", "recall", "f1", "auc")
        ]
    lines += [*_table(["metric", "value"], rows), ""]
    if m.get("classes_without_auc"):
        lines += [
            f"{m['classes_without_auc']} class(es) have no AUC (no positive or no negative sample).",
            "",
        ]

    per = m["per_class"]
    header = ["class", "support", "precision", "recall", "F1", "AUC"]
    columns = [per["support"], per["precision"], per["recall"], per["f1"], per["auc"]]
    if multi and "tuned" in m:
        header += ["threshold", "F1 @threshold"]
        columns += [m["tuned"]["thresholds"], m["tuned"]["per_class"]["f1"]]
    rows = [[name, *(_text(col[i]) for col in columns)] for i, name in enumerate(m["class_names"])]
    lines += ["### Per class" + (" (precision, recall, F1 at threshold 0.5)" if multi else ""), ""]
    return lines + _table(header, rows) + [""]


def _retrieval(m: Mapping) -> list[str]:
    lines = ["## Retrieval", ""]
    excluded = {"same array": "the query itself excluded", "by id": "the query itself excluded by id"}
    lines.append(
        f"{m['num_queries']} queries against {m['num_database']} database items, "
        f"{m['embedding_dim']}-d embeddings, {excluded.get(m['self_excluded'], 'no self-exclusion')}."
    )
    lines.append("")
    ks = m["ks"]
    knn_key, knn_label = ("knn_sample_f1", "kNN sample F1") if m["multi_label"] else ("knn_accuracy", "kNN accuracy")
    rows = [
        [
            str(k),
            *(_num(m[key][str(k)]) for key in ("precision_at_k", "recall_at_k", "hit_rate_at_k", knn_key)),
        ]
        for k in ks
    ]
    lines += [*_table(["K", "P@K", "R@K", "hit rate@K", knn_label], rows), ""]
    lines += _table(["metric", "value"], [["mAP@all", _num(m["map_at_all"])], ["mAP@R", _num(m["map_at_r"])]])
    lines += ["", f"Queries without any relevant item: {m['queries_without_relevant']} ({m['note']}).", ""]

    per = m["per_class"]
    kmax = ks[-1]
    header = ["class", "queries", *(f"P@{k}" for k in ks), f"R@{kmax}", "AP", "AP@R"]
    rows = [
        [
            name,
            str(per["num_queries"][i]),
            *(_num(per["precision_at_k"][str(k)][i]) for k in ks),
            _num(per["recall_at_k"][str(kmax)][i]),
            _num(per["ap"][i]),
            _num(per["ap_at_r"][i]),
        ]
        for i, name in enumerate(per["class_names"])
    ]
    lines += [f"### Per class ({per['grouping']})", ""]
    return lines + _table(header, rows) + [""]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cells(values: Sequence[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows)]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _text(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
