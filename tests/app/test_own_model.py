"""``make demo DATA=<labelled folder>`` with classes the shipped model does not know: the demo trains the own-photos
recipe on the folder (msir-train in a child process), prints the held-out accuracy and mAP@all, indexes the folder
with the new model and serves it; a second run reuses both. Plus the decisions around it (app/own_model.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app import own_model as om
from app import quickstart as demo
from tests.app.test_quickstart import CIFAR10_CLASSES, DemoProcess, assert_clean_stop, search, shipped_checkpoint

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"lava": (200, 40, 30), "meadow": (40, 180, 50), "lagoon": (30, 60, 200)}  # none is a CIFAR-10 class


def write_folder(root: Path, per_class: int = 10, side: int = 24) -> Path:
    """Three classes of noisy colour patches, one folder per class (no test split: the demo carves one)."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.asarray(colour)[None, None, :] + rng.normal(0, 40, (side, side, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


def test_decisions(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "photos", per_class=5)
    auto = om.decide(folder, CIFAR10_CLASSES, "auto")
    assert auto.train and sorted(auto.folder_classes) == sorted(COLOURS) and "not the shipped" in auto.reason
    assert auto.labels is not None and auto.labels.images == 15 and auto.labels.train_images == 11
    assert not om.decide(folder, CIFAR10_CLASSES, "0").train
    assert not om.decide(folder, sorted(COLOURS), "auto").train  # the model already knows them
    assert om.decide(folder, sorted(COLOURS), "1").train
    plain = tmp_path / "plain"
    plain.mkdir()
    (folder / "lava" / "00.png").rename(plain / "a.png")
    assert om.decide(plain, CIFAR10_CLASSES, "1").labels is None  # unlabelled: today's behaviour, never trained


def test_run_key_follows_content_labels_and_recipe(tmp_path: Path) -> None:
    key = om.run_key("fp", ["a", "b"], om.RECIPE, [])
    assert key == om.run_key("fp", ["a", "b"], om.RECIPE, [])
    assert len({key, om.run_key("fp2", ["a", "b"], om.RECIPE, []), om.run_key("fp", ["a", "c"], om.RECIPE, [])}) == 3
    assert key != om.run_key("fp", ["a", "b"], om.RECIPE, ["data.image_size=96"])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"extends: {om.RECIPE}\noptim:\n  lr0: 0.01\n")
    commented = tmp_path / "commented.yaml"
    commented.write_text(f"# a comment\nextends: {om.RECIPE}\noptim:\n  lr0: 0.01  # why\n")
    assert key != om.run_key("fp", ["a", "b"], recipe, []) == om.run_key("fp", ["a", "b"], commented, [])
    assert om.recipe_image_size(om.RECIPE, []) == 64 and om.recipe_image_size(om.RECIPE, ["data.image_size=96"]) == 96


def test_small_images_train_smaller_and_the_budget_picks_epochs(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "photos", per_class=3, side=28)
    assert om.fitted_image_size(demo.image_files(folder), 64) == 32
    assert om.fitted_image_size(demo.image_files(folder), 32) is None  # never larger than the recipe's
    slow = om.epochs_for_budget(3000, 64, 15, load=4.0, cpus=2)
    assert 1 <= slow < om.epochs_for_budget(3000, 64, 15, load=0.0, cpus=2) <= 60
    assert om.estimate_seconds(3000, slow, 64, 4.0, 2) <= 15 * 60


@pytest.mark.slow
def test_labelled_folder_trains_evaluates_indexes_serves_and_reuses(tmp_path: Path) -> None:
    shipped_checkpoint()
    folder = write_folder(tmp_path / "photos")
    var = tmp_path / "var"
    # One epoch of tiny batches (the recipe's network, its own test split); torch serving skips the ONNX export.
    args = ["--data", str(folder), "--var-dir", str(var), "--train-epochs", "1"]
    args += ["--train-set", "optim.batch_size=8", "--train-set", f"data.cache_dir={tmp_path / 'decoded'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env |= {"COLUMNS": "80", "MSIR_RUNTIME": "torch", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(
        [sys.executable, "-m", "app.quickstart", *args, "--build-only", "--device", "cpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    err = " ".join(first.stderr.split())
    assert first.returncode == 0, first.stdout + first.stderr
    assert "classes are not the shipped checkpoint's" in err and "training at 32 px" in err and "about" in err
    assert "held-out accuracy" in err and "mAP@all" in err, err
    (run_dir,) = (var / "models").iterdir()
    assert om.finished(run_dir) is not None and "built" in err

    proc = DemoProcess(args, tmp_path, extra_env={"MSIR_RUNTIME": "torch", "OMP_NUM_THREADS": "1"})
    try:
        proc.wait_ready()
        info = httpx.get(f"{proc.url}/v1/collection", timeout=30).json()
        assert info["classes"] == sorted(COLOURS) and info["predictions_scope"] == "collection"
        body = search(proc.url, folder / "meadow" / "03.png", k=5)
        assert body["predictions_scope"] == "collection"
        assert {p["label"] for p in body["predictions"]} <= set(COLOURS)
        assert set(body["knn_prediction"]["labels"]) <= set(COLOURS)
        assert_clean_stop(proc)
    finally:
        proc.kill()
    again = " ".join(proc.err.read_text().split())
    assert "model: reusing" in again and "reused" in again and "training a model" not in again


def test_an_interrupted_run_keeps_its_epochs(tmp_path: Path) -> None:
    """A resumed run must keep its schedule: the epochs come from the run's config.yaml, not a new estimate."""
    assert om.resumed_epochs(tmp_path) is None and om.finished(tmp_path) is None
    (tmp_path / "config.yaml").write_text("optim:\n  epochs: 7.0\n")
    assert om.resumed_epochs(tmp_path) == 7
    (tmp_path / "metrics.json").write_text('{"epochs": 7, "test": {"accuracy": 0.9, "map_at_all": 0.8}}')
    assert om.finished(tmp_path) is None  # no best checkpoint: not finished
    (tmp_path / "best.safetensors").write_bytes(b"")
    model = om.own_model(tmp_path, om.finished(tmp_path) or {}, "reused")
    assert (model.accuracy, model.map_at_all, model.epochs) == (0.9, 0.8, 7)
