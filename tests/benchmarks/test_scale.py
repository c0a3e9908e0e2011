"""benchmarks/scale.py: the synthetic rows stay on the unit sphere near their base image, the brute-force ground
truth is the exact top k (filtered too), and the tables are written from a result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks import scale


def test_synthesised_rows_are_unit_norm_and_near_their_base() -> None:
    base = np.random.default_rng(0).normal(size=(20, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    vectors, pick, parts = scale.synthesise(base, 500, 0.02, seed=3)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (np.argmax(vectors @ base.T, axis=1) == pick).mean() > 0.95
    assert parts.min() >= 0 and parts.max() < scale.PARTS


def test_ground_truth_is_the_exact_top_k_with_and_without_a_filter() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    mask = rng.random(300) < 0.2
    for m in (None, mask):
        truth = scale.ground_truth(vectors, queries, m)
        scores = queries @ vectors.T
        if m is not None:
            scores[:, ~m] = -np.inf
            assert m[truth - 1].all()
        expected = np.argsort(-scores, axis=1)[:, : scale.K] + 1  # database ids start at 1
        assert [set(r) for r in truth.tolist()] == [set(r) for r in expected.tolist()]


def test_tables_are_written_from_the_result(tmp_path: Path) -> None:
    measured = {"recall@10": 0.97, "p50_ms": 1.5, "p95_ms": 3.0, "answers_short_of_k": 0}
    kind = {"rebuild_s": 9.0, "rebuild_peak_rss_mb": 100, "index": {"type": "ivfpq"},
            "none": measured, "10 % (class)": measured, "1 % (part07)": {**measured, "answers_short_of_k": 2},
            "serve": {"ready_s": 4.0, "rss_mb": 300, "anon_mb": 250, "file_mb": 50},
            "serve_mmap": {"ready_s": 2.0, "rss_mb": 200, "anon_mb": 100, "file_mb": 100}}  # fmt: skip
    load = {"before": [1, 1, 1], "after": [1, 1, 1]}
    result = {"rows": 2_000_000, "date": "d", "device": "cpu", "queries": 5, "noise": 0.05, "copy_s": 1.0,
              "embeddings": "e", "load_average": load, "kinds": {"auto": kind}}  # fmt: skip
    scale.write(result, tmp_path)
    table = (tmp_path / "scale-2m.md").read_text()
    assert "| auto → ivfpq | 9.0 | 100 | 0.9700, 1.5 / 3.0 |" in table and "(2 short of k)" in table
    assert "| 4.0 (300 = 250 + 50) | 2.0 (200 = 100 + 100) |" in table
    assert (tmp_path / "scale-2m.json").is_file()
