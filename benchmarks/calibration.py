"""Fit the "same class" probability of a search result on held-out data; measure its calibration.

Data: the 10,000 CIFAR-10 **test** images (never seen in training), embedded by a checkpoint (default: the shipped
demo model). They are split at random (seed 0) into two halves of 5,000: half A fits, half B evaluates. Within a
half, every image is a query against the other images of that half (itself excluded); each of its top ``k``
neighbours gives one pair (cosine score, same class or not), as a search of a collection of 5,000 images would.

An isotonic regression (scikit-learn) fitted on half A's pairs maps the cosine to P(same class); it is saved beside
the checkpoint (``NAME.calibration.json``, :mod:`msir_core.retrieval.calibration`), where the service finds it and
answers ``same_class_probability`` per result. On half B: the expected calibration error (15 equal-width bins) and
the Brier score of the calibrated probability, against the raw cosine clipped to [0, 1] as the uncalibrated
reference; a reliability diagram. Writes ``results/benchmarks/calibration.{json,md}`` and
``calibration_reliability.png``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.calibration
        [--checkpoint demo/checkpoint/mscfnet4_cifar10.safetensors] [--data ~/.cache/msir/datasets/cifar10] [--k 10]

The extracted CIFAR-10 copy comes from ``../shared/datasets/cifar10-jpg.tar`` (see its README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression

from benchmarks.eval_speed import cpu_cores, cpu_model
from models import load_checkpoint
from msir_core.atomic import atomic_write_text
from msir_core.retrieval.calibration import Calibration, calibration_path, expected_calibration_error
from msir_data import open_dataset
from msir_data.cache import cached_split
from training.evaluation.embed import embed_arrays

logger = logging.getLogger("benchmarks.calibration")
BINS = 15


def neighbour_pairs(emb: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(cosine [n*k], same class [n*k]) of every image's top-k neighbours among the others of ``emb``."""
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    scores = np.take_along_axis(sims, top, axis=1)
    same = labels[top] == labels[:, None]
    return scores.ravel(), same.ravel().astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("demo/checkpoint/mscfnet4_cifar10.safetensors"))
    parser.add_argument("--data", type=Path, default=Path("~/.cache/msir/datasets/cifar10"))
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/msir/decoded"))
    parser.add_argument("--k", type=int, default=10, help="neighbours per query whose pairs are fitted/evaluated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    started = time.perf_counter()
    loaded = load_checkpoint(args.checkpoint, device="cpu")
    reader = open_dataset("auto", args.data.expanduser())
    cached = cached_split(reader, "test", loaded.meta.preprocess, args.cache_dir.expanduser(), progress=False)
    emb, _ = embed_arrays(loaded.model, cached.images, loaded.meta.preprocess, 256, progress=False)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.asarray(cached.labels)
    if labels.ndim != 1:
        raise SystemExit("calibration needs a single-label dataset (one class per image)")
    embed_seconds = time.perf_counter() - started

    order = np.random.default_rng(0).permutation(len(emb))
    half_a, half_b = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
    fit_x, fit_y = neighbour_pairs(emb[half_a], labels[half_a], args.k)
    test_x, test_y = neighbour_pairs(emb[half_b], labels[half_b], args.k)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(fit_x, fit_y)
    calibration = Calibration(
        np.asarray(iso.X_thresholds_, np.float64),
        np.asarray(iso.y_thresholds_, np.float64),
        loaded.meta.weights_sha256,
    )
    calibrated = calibration(test_x)
    # The saved function is sklearn's own prediction (np.interp between the same thresholds).
    assert np.allclose(calibrated, iso.predict(test_x), atol=1e-12)
    raw = np.clip(test_x, 0.0, 1.0)
    ece, rows = expected_calibration_error(calibrated, test_y, BINS)
    ece_raw, rows_raw = expected_calibration_error(raw, test_y, BINS)
    result = {
        "benchmark": "calibration",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": str(args.checkpoint),
        "weights_sha256": loaded.meta.weights_sha256,
        "data": "CIFAR-10 test split (held out from training), 2 random halves of 5,000 (seed 0)",
        "k": args.k,
        "fit_pairs": len(fit_x),
        "eval_pairs": len(test_x),
        "eval_same_class_rate": round(float(test_y.mean()), 4),
        "steps": len(calibration.scores),
        "bins": BINS,
        "ece_calibrated": round(ece, 4),
        "ece_raw_cosine": round(ece_raw, 4),
        "brier_calibrated": round(float(np.mean((calibrated - test_y) ** 2)), 4),
        "brier_raw_cosine": round(float(np.mean((raw - test_y) ** 2)), 4),
        "reliability_calibrated": rows,
        "reliability_raw_cosine": rows_raw,
        "device": {
            "cpu": cpu_model(),
            "cpu_cores": cpu_cores(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min_before": round(load_before, 2),
            "load_average_1min_after": round(os.getloadavg()[0], 2),
        },
        "embedding_seconds": round(embed_seconds, 1),
    }
    saved = calibration_path(loaded.path)
    Calibration(
        calibration.scores,
        calibration.probabilities,
        calibration.weights_sha256,
        {k: result[k] for k in ("date", "data", "k", "fit_pairs", "ece_calibrated", "ece_raw_cosine")}
        | {"fitted_by": "benchmarks/calibration.py (sklearn IsotonicRegression on half A)"},
    ).save(saved)
    result["calibration_file"] = str(saved)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "calibration"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    plot(result, fit_x, calibration, args.out / "calibration_reliability.png")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(markdown(result)) + "\n")
    logger.info("ECE %.4f calibrated, %.4f raw cosine; saved %s", ece, ece_raw, saved)


def plot(result: dict, fit_x: np.ndarray, calibration: Calibration, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for key, name, colour in (
        ("reliability_raw_cosine", f"raw cosine (ECE {result['ece_raw_cosine']:.3f})", "tab:gray"),
        ("reliability_calibrated", f"isotonic (ECE {result['ece_calibrated']:.3f})", "tab:blue"),
    ):
        rows = result[key]
        left.plot(
            [r["mean_probability"] for r in rows],
            [r["observed_frequency"] for r in rows],
            "o-",
            color=colour,
            label=name,
        )
    left.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    left.set(
        xlabel="predicted P(same class)",
        ylabel="observed share of same-class results",
        title=f"Reliability on held-out half B ({result['eval_pairs']:,} pairs, {result['bins']} bins)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    left.legend(loc="upper left", fontsize=8)
    grid = np.linspace(float(fit_x.min()), 1.0, 400)
    right.plot(grid, calibration(grid), color="tab:blue")
    right.set(
        xlabel="cosine score",
        ylabel="P(same class)",
        title=f"Fitted map (top-{result['k']} results, {result['fit_pairs']:,} pairs)",
        ylim=(0, 1),
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> list[str]:
    dev = result["device"]
    return [
        "# Calibrated same-class probability",
        "",
        f"Checkpoint `{result['checkpoint']}` (weights sha256 {result['weights_sha256'][:12]}…). {result['data']}: "
        f"every image of a half searches the others of its half; its top {result['k']} results give the pairs. "
        f"Isotonic regression fitted on half A ({result['fit_pairs']:,} pairs, {result['steps']} steps), "
        f"evaluated on half B ({result['eval_pairs']:,} pairs, {result['eval_same_class_rate']:.1%} same class). "
        f"{result['date']} on {dev['cpu']}, {dev['cpu_cores']} cores shared with other jobs, {dev['torch_threads']} "
        f"torch thread(s), 1-min load average {dev['load_average_1min_before']} before and "
        f"{dev['load_average_1min_after']} after.",
        "",
        "| probability | ECE (15 bins) | Brier score |",
        "|---|---|---|",
        f"| raw cosine, clipped to [0, 1] | {result['ece_raw_cosine']:.4f} | {result['brier_raw_cosine']:.4f} |",
        f"| isotonic calibration | {result['ece_calibrated']:.4f} | {result['brier_calibrated']:.4f} |",
        "",
        "![reliability diagram](calibration_reliability.png)",
        "",
        f"The fitted map is saved as `{result['calibration_file']}`; the service reads it and answers "
        "`same_class_probability` per result (without re-ranking).",
    ]


if __name__ == "__main__":
    main()
