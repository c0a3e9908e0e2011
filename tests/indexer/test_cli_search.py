"""``msir-index search`` for people: full item paths whatever the terminal width, and the class prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from indexer import Collection
from indexer.cli import app
from indexer.predict import predict
from models import open_image
from tests.indexer.conftest import CLASSES, write_labelled_folder


def test_search_prints_whole_paths_and_the_prediction(tmp_path: Path, checkpoint: Path) -> None:
    # Paths far longer than 80 columns: every one must come out whole (a table would cut them with "…").
    root = write_labelled_folder(tmp_path / ("a_long_directory_name_for_a_photo_archive_" * 3), 4)
    directory = tmp_path / "col"
    runner = CliRunner()
    args = ["build", str(directory), "-c", str(checkpoint), "--data", str(root), "--workers", "0", "--device", "cpu"]
    assert runner.invoke(app, [*args, "--json"]).exit_code == 0
    query = next((root / "test" / "blue").glob("*.png"))
    search = ["search", str(directory), "--image", str(query), "-k", "5", "--device", "cpu"]
    text = runner.invoke(app, search, env={"COLUMNS": "80"})
    assert text.exit_code == 0, text.output
    with Collection.open(directory, device="cpu") as col:
        emb = col.embedder.embed_images([open_image(query)])
        hits = col.search(emb.embeddings, 5)[0]
        expected = predict(emb.logits[0], hits, CLASSES, multi_label=False)
    lines = text.stdout.splitlines()
    assert len(hits) == 5 and all(len(h.record.uri) > 80 for h in hits)
    for rank, hit in enumerate(hits, 1):
        (row,) = [line for line in lines[1:] if line.endswith(hit.record.uri)]  # [0]: "nearest to QUERY"
        assert row.split()[:3] == [str(rank), f"{hit.score:.4f}", str(hit.id)]
    assert "…" not in text.stdout
    # The classifier head (softmax, most probable first) and the neighbours' vote, as the Python API computes them.
    (head,) = [line for line in lines if line.startswith("classifier: ")]
    assert head.startswith(f"classifier: {expected.classifier[0][0]} {expected.classifier[0][1]:.2f}")
    (vote,) = [line for line in lines if line.startswith("neighbours: ")]
    assert expected.knn is not None and vote.startswith(f"neighbours: {expected.knn.labels[0]} (")
    assert expected.knn.labels[0] in CLASSES and "5 voted" in vote

    out = json.loads(runner.invoke(app, [*search, "--json"]).stdout)
    assert out["prediction"] == expected.to_json()
    probs = [c["probability"] for c in out["prediction"]["classifier"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    full = predict(emb.logits[0], hits, CLASSES, multi_label=False, top=10).classifier
    assert np.isclose(sum(p for _, p in full), 1.0)  # all classes: a softmax distribution


def test_search_min_score_drops_the_results_below_it(tmp_path: Path, checkpoint: Path) -> None:
    root = write_labelled_folder(tmp_path / "images", 4)
    directory = tmp_path / "col"
    runner = CliRunner()
    args = ["build", str(directory), "-c", str(checkpoint), "--data", str(root), "--workers", "0", "--device", "cpu"]
    assert runner.invoke(app, [*args, "--json"]).exit_code == 0
    query = next((root / "test" / "red").glob("*.png"))
    search = ["search", str(directory), "--image", str(query), "-k", "8", "--device", "cpu", "--json"]
    full = json.loads(runner.invoke(app, search).stdout)["hits"]
    cut = (full[2]["score"] + full[3]["score"]) / 2
    kept = json.loads(runner.invoke(app, [*search, "--min-score", str(cut)]).stdout)["hits"]
    assert [h["id"] for h in kept] == [h["id"] for h in full[:3]]
    refused = runner.invoke(app, [*search, "--min-score", "1.5"])
    assert refused.exit_code != 0 and "min-score" in refused.output
