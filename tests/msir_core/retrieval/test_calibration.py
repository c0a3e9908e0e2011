"""The saved calibration is sklearn's isotonic prediction, evaluated without sklearn; files are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from msir_core.retrieval.calibration import (
    Calibration,
    CalibrationError,
    calibration_path,
    expected_calibration_error,
    load_calibration,
)

SHA = "ab" * 32


def fitted() -> tuple[IsotonicRegression, Calibration]:
    rng = np.random.default_rng(0)
    scores = rng.uniform(-0.2, 1.0, 2000)
    same = (rng.uniform(size=2000) < np.clip(scores, 0, 1) ** 2).astype(float)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, same)
    return iso, Calibration(iso.X_thresholds_, iso.y_thresholds_, SHA)


def test_interpolation_equals_sklearn_prediction_inside_and_outside_the_fitted_range() -> None:
    iso, calibration = fitted()
    probe = np.linspace(-1.0, 1.0, 1001)
    np.testing.assert_allclose(calibration(probe), iso.predict(probe), atol=1e-12)
    assert calibration([-1.0])[0] == pytest.approx(iso.y_thresholds_[0])
    assert np.all(np.diff(calibration(probe)) >= 0)


def test_save_and_load_round_trip_and_refuse_other_weights(tmp_path: Path) -> None:
    _, calibration = fitted()
    path = calibration_path(tmp_path / "model.safetensors")
    assert path.name == "model.calibration.json"
    calibration.save(path)
    loaded = load_calibration(path, SHA)
    np.testing.assert_array_equal(loaded.scores, calibration.scores)
    np.testing.assert_array_equal(loaded.probabilities, calibration.probabilities)
    with pytest.raises(CalibrationError, match="not these"):
        load_calibration(path, "cd" * 32)
    raw = json.loads(path.read_text())
    raw["probabilities"] = raw["probabilities"][::-1]  # decreasing: not a calibration
    path.write_text(json.dumps(raw))
    with pytest.raises(CalibrationError, match="must not decrease"):
        load_calibration(path, SHA)


def test_expected_calibration_error_of_known_bins() -> None:
    # Two bins: predictions 0.1 (observed 0.0) and 0.9 (observed 1.0), half the pairs each: ECE = 0.1.
    p = np.array([0.1, 0.1, 0.9, 0.9])
    o = np.array([0.0, 0.0, 1.0, 1.0])
    ece, rows = expected_calibration_error(p, o, bins=10)
    assert ece == pytest.approx(0.1)
    assert [r["count"] for r in rows] == [2, 2]
    assert expected_calibration_error(np.array([0.5, 0.5]), np.array([0.0, 1.0]))[0] == pytest.approx(0.0)
