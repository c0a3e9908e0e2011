"""Calibrated "same class" probability of a search result, from its cosine score.

The mapping is fitted offline (isotonic regression, ``benchmarks/calibration.py``, with scikit-learn) on held-out
(query, neighbour) pairs and saved as its step points; serving evaluates it with :func:`numpy.interp`, which is
what :meth:`sklearn.isotonic.IsotonicRegression.predict` computes (linear between the thresholds, clipped at the
ends), so the service needs neither scikit-learn nor pickle.

The file lives beside the checkpoint (``NAME.calibration.json`` next to ``NAME.safetensors``) and names the weights'
sha256: a calibration of other weights is refused, since the scores it was fitted on came from another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from msir_core.atomic import atomic_write_text
from msir_core.versioned_json import read_versioned_json

FORMAT = "msir-calibration"
FORMAT_VERSION = 1
SUFFIX = ".calibration.json"


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing piecewise-linear map from a cosine score to P(same class), clipped at both ends."""

    scores: np.ndarray  # float64 [n], strictly increasing
    probabilities: np.ndarray  # float64 [n], non-decreasing, in [0, 1]
    weights_sha256: str
    info: dict[str, Any] = field(default_factory=dict)  # how it was fitted (data, k, held-out ECE)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.scores, np.float64), np.asarray(self.probabilities, np.float64)
        if x.ndim != 1 or x.shape != y.shape or len(x) < 1:
            raise CalibrationError(f"scores and probabilities must be two 1-D arrays of one length, got {x.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise CalibrationError("scores and probabilities must be finite")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise CalibrationError("scores must increase strictly and probabilities must not decrease")
        if y.min() < 0 or y.max() > 1:
            raise CalibrationError("probabilities must lie in [0, 1]")
        object.__setattr__(self, "scores", x)
        object.__setattr__(self, "probabilities", y)

    def __call__(self, scores: np.ndarray | list[float]) -> np.ndarray:
        return np.interp(np.asarray(scores, np.float64), self.scores, self.probabilities)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "weights_sha256": self.weights_sha256,
            "scores": [float(v) for v in self.scores],
            "probabilities": [float(v) for v in self.probabilities],
            "info": self.info,
        }

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1) + "\n")


def calibration_path(weights_path: Path) -> Path:
    """``dir/NAME.safetensors`` -> ``dir/NAME.calibration.json``."""
    return weights_path.with_name(weights_path.name.removesuffix(".safetensors") + SUFFIX)


def load_calibration(path: Path, weights_sha256: str) -> Calibration:
    raw = read_versioned_json(
        path,
        fmt=FORMAT,
        max_version=FORMAT_VERSION,
        error=CalibrationError,
        what="an msir calibration",
        unreadable="unreadable calibration",
    )
    if raw.get("weights_sha256") != weights_sha256:
        raise CalibrationError(
            f"{path}: fitted for weights {str(raw.get('weights_sha256'))[:12]}…, not these ({weights_sha256[:12]}…)"
        )
    try:
        return Calibration(
            np.asarray(raw["scores"], np.float64),
            np.asarray(raw["probabilities"], np.float64),
            weights_sha256,
            dict(raw.get("info") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"{path}: {exc}") from exc


def expected_calibration_error(
    probabilities: np.ndarray, outcomes: np.ndarray, bins: int = 15
) -> tuple[float, list[dict[str, float]]]:
    """ECE over ``bins`` equal-width bins of the predicted probability: sum over bins of (bin share) x |mean
    outcome - mean prediction|; with the per-bin rows (count, mean prediction, observed frequency) for a
    reliability diagram."""
    p = np.asarray(probabilities, np.float64)
    o = np.asarray(outcomes, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    rows: list[dict[str, float]] = []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if n == 0:
            continue
        mean_p, freq = float(p[mask].mean()), float(o[mask].mean())
        ece += n / len(p) * abs(freq - mean_p)
        rows.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "mean_probability": mean_p,
                "observed_frequency": freq,
            }
        )
    return float(ece), rows


__all__ = [
    "Calibration",
    "CalibrationError",
    "calibration_path",
    "expected_calibration_error",
    "load_calibration",
]
