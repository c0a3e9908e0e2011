"""PNG plots of evaluation metrics, readable with 10 and with 100 classes.

Every function draws on its own ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot): nothing global
changes, so plotting is safe in servers and threads. Functions that take ``runs`` accept one metrics dict,
or a mapping ``{model name: metrics dict}`` to compare several models side by side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from msir_core.retrieval.probabilities import probabilities

__all__ = [
    "plot_classification_per_class",
    "plot_confusion_matrix",
    "plot_precision_at_k",
    "plot_retrieval_per_class",
    "plot_roc_curves",
]

MAX_TICK_LABELS = 100  # beyond this, every n-th class is labelled
MAX_LEGEND_CURVES = 15  # beyond this, the ROC legend lists only the best and worst classes
DPI = 100


def _runs(runs: Mapping[str, dict] | dict) -> dict[str, dict]:
    """A single metrics dict (it has "per_class") becomes a one-model mapping."""
    if "per_class" in runs:
        return {"model": dict(runs)}
    return dict(runs)


def _value(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _class_ticks(ax: Axes, names: Sequence[str], axis: str = "x") -> None:
    """Tick labels that stay readable: smaller and rotated as classes grow, capped at MAX_TICK_LABELS."""
    n = len(names)
    step = max(1, math.ceil(n / MAX_TICK_LABELS))
    positions = np.arange(0, n, step)
    labels = [names[i] for i in positions]
    size = 9 if n <= 20 else 7 if n <= 50 else 6
    longest = max((len(s) for s in labels), default=0)
    if axis == "x":
        rotation = 0 if n <= 10 and longest <= 8 else 45 if n <= 30 else 90
        ax.set_xticks(positions, labels, fontsize=size, rotation=rotation, ha="right" if rotation == 45 else "center")
    else:
        ax.set_yticks(positions, labels, fontsize=size)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


def _grouped_bars(
    path: str | Path,
    names: Sequence[str],
    panels: Sequence[tuple[str, dict[str, Sequence[float | None]]]],
    title: str,
) -> Path:
    """One panel per metric; in each, one bar per model for every class."""
    n_classes = len(names)
    n_models = max(len(series) for _, series in panels)
    width_in = float(np.clip(2 + n_classes * max(0.35, 0.14 * n_models), 8, 32))
    panel_in = 2.6 if n_classes <= 30 else 3.2
    fig = Figure(figsize=(width_in, panel_in * len(panels) + 1.2), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    x = np.arange(n_classes)
    bar = 0.8 / n_models
    for ax, (metric, series) in zip(axes, panels, strict=True):
        for i, (model, values) in enumerate(series.items()):
            heights = [_value(v) for v in values]
            ax.bar(x - 0.4 + bar * (i + 0.5), np.nan_to_num(heights), width=bar, label=model)
        ax.set_ylabel(metric)
        top = np.nanmax([_value(v) for vals in series.values() for v in vals] + [0.0])
        # Small values (R@K against a large database) get their own scale instead of a flat line.
        ax.set_ylim(0, 1.05 if top > 0.25 else max(top * 1.2, 0.01))
        ax.set_xlim(-0.6, n_classes - 0.4)
        ax.grid(axis="y", alpha=0.3)
        mean = np.nanmean([_value(v) for vals in series.values() for v in vals]) if n_models == 1 else None
        if mean is not None and not math.isnan(mean):
            ax.axhline(mean, color="grey", linestyle="--", linewidth=1, label=f"mean {mean:.3f}")
    _class_ticks(axes[-1], names)
    for ax in axes if n_models == 1 else axes[:1]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_classification_per_class(
    runs: Mapping[str, dict] | dict, path: str | Path, *, title: str = "Per-class classification"
) -> Path:
    """Grouped bars of per-class precision, recall and F1 (multi-label: at threshold 0.5)."""
    models = _runs(runs)
    names = next(iter(models.values()))["class_names"]
    panels = [
        (metric, {model: m["per_class"][key] for model, m in models.items()})
        for metric, key in (("precision", "precision"), ("recall", "recall"), ("F1", "f1"))
    ]
    return _grouped_bars(path, names, panels, title)


def plot_retrieval_per_class(
    runs: Mapping[str, dict] | dict,
    path: str | Path,
    *,
    k: int | None = None,
    title: str = "Per-class retrieval",
) -> Path:
    """Grouped bars of per-class P@K, R@K and AP (K defaults to the largest K <= 10 that was evaluated)."""
    models = _runs(runs)
    first = next(iter(models.values()))
    ks = first["ks"]
    k = k if k is not None else max([v for v in ks if v <= 10] or ks[:1])
    per = {model: m["per_class"] for model, m in models.items()}
    panels = [
        (f"P@{k}", {model: p["precision_at_k"][str(k)] for model, p in per.items()}),
        (f"R@{k}", {model: p["recall_at_k"][str(k)] for model, p in per.items()}),
        ("AP", {model: p["ap"] for model, p in per.items()}),
    ]
    return _grouped_bars(path, first["per_class"]["class_names"], panels, title)


def plot_confusion_matrix(
    classification: dict, path: str | Path, *, title: str = "Normalised confusion matrix"
) -> Path:
    """Heatmap of the row-normalised confusion matrix (rows = true class), values printed up to 25 classes."""
    cm = np.asarray(classification["confusion_matrix"]["normalised"], dtype=np.float64)
    names = classification["class_names"]
    n = len(names)
    side = float(np.clip(0.32 * n + 3, 6, 22))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the true class")
    if n <= 25:
        size = max(5.0, 11 - n / 3)
        for i, j in np.ndindex(cm.shape):
            colour = "white" if cm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=size, color=colour)
    _class_ticks(ax, names, "x")
    _class_ticks(ax, names, "y")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return _save(fig, path)


def plot_roc_curves(
    y_true: np.ndarray,
    scores: np.ndarray,
    path: str | Path,
    *,
    class_names: Sequence[str] | None = None,
    multi_label: bool = False,
    scores_are_logits: bool = True,
    title: str = "ROC curves (one-vs-rest)",
) -> Path:
    """One ROC curve per class with its AUC in the legend, plus the macro-average curve.

    With more than ``MAX_LEGEND_CURVES`` classes every curve is drawn thin and grey, and only the five best
    and five worst classes by AUC get a colour and a legend entry. Classes with no positive or no negative
    sample have no curve.
    """
    probs = probabilities(np.asarray(scores), multi_label=multi_label, scores_are_logits=scores_are_logits)
    y = np.asarray(y_true)
    n = probs.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(n)]
    positives = y.astype(bool) if multi_label else (y[:, None] == np.arange(n)[None, :])
    grid = np.linspace(0.0, 1.0, 201)
    curves: list[tuple[int, np.ndarray, np.ndarray, float]] = []
    for c in range(n):
        if 0 < positives[:, c].sum() < len(y):
            fpr, tpr, _ = roc_curve(positives[:, c], probs[:, c])
            curves.append((c, fpr, tpr, float(np.trapezoid(tpr, fpr))))
    fig = Figure(figsize=(9.5 if n > MAX_LEGEND_CURVES else 8.5, 6.5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    many = len(curves) > MAX_LEGEND_CURVES
    ranked = sorted(curves, key=lambda item: (-item[3], item[0]))
    # Legend order is best AUC first; with many classes only the extremes get a colour and a legend entry.
    named = ranked[:5] + ranked[-5:] if many else ranked
    if many:
        for _, fpr, tpr, _ in curves:
            ax.plot(fpr, tpr, color="grey", linewidth=0.6, alpha=0.3)
    for (c, fpr, tpr, auc), colour in zip(named, _colours(len(named)), strict=True):
        ax.plot(fpr, tpr, color=colour, linewidth=1.5, label=f"{names[c]} (AUC {auc:.3f})")
    if curves:
        mean_tpr = np.mean([np.interp(grid, fpr, tpr) for _, fpr, tpr, _ in curves], axis=0)
        macro = np.mean([auc for *_, auc in curves])
        ax.plot(grid, mean_tpr, color="black", linewidth=2.2, label=f"macro average (AUC {macro:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    suffix = f" — legend: 5 best and 5 worst of {len(curves)} classes" if many else ""
    ax.set_title(title + suffix, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_precision_at_k(runs: Mapping[str, dict] | dict, path: str | Path, *, title: str = "Retrieval @ K") -> Path:
    """P@K, R@K and hit rate against K, one line per model."""
    models = _runs(runs)
    fig = Figure(figsize=(13, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("precision_at_k", "P@K"), ("recall_at_k", "R@K"), ("hit_rate_at_k", "hit rate @K"))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for model, m in models.items():
            ks = m["ks"]
            ax.plot(ks, [_value(m[key][str(k)]) for k in ks], marker="o", label=model)
        ks_all = sorted({k for m in models.values() for k in m["ks"]})
        if ks_all[-1] / ks_all[0] >= 20:
            ax.set_xscale("log")
        ax.set_xticks(ks_all, [str(k) for k in ks_all])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def _colours(n: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]
