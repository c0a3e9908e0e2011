"""A labelled folder's own model for ``make demo DATA=<folder>``: decide whether to train, estimate, train, evaluate.

When the folder's classes are not the shipped checkpoint's, the demo trains the own-photos recipe
(``configs/cnn/own_photos_cpu.yaml``) on it. Training runs as a ``msir-train`` subprocess
(``python -m training.cli``), not an import: the serving packages (``app`` included) must not import ``training``
(import-linter contract; the serving image does not even ship it), and a child process also keeps training's
threads, progress bar and memory out of the server that follows. msir-train holds out the folder's ``test`` split,
or carves a stratified, deterministic 20 % of a single-split folder (``training.splits.carve_test``: the same
images on every run), evaluates the best checkpoint on it (accuracy, mAP@all) and writes ``metrics.json``.

Runs live in ``<var-dir>/models/<folder>-<key>``, the key hashing the folder's content (file names, sizes,
modification times), its class names and the recipe (every config file it extends, plus the overrides): a second
demo run with the same inputs reuses the finished model; an interrupted run is resumed by msir-train.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

logger = logging.getLogger("app.own_model")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "cnn" / "own_photos_cpu.yaml"
# Process CPU time of one training image for one epoch of the recipe at 64 px, one thread, bf16 on this project's
# AMD EPYC (avx512_bf16), evaluation included: results/own_photos/recipe/metrics.json (414 s of CPU for 15 epochs
# of 1,728 training images). The estimate scales it by the pixel count and by the machine's load.
CPU_SECONDS_PER_IMAGE_EPOCH_64PX = 0.016
TrainMode = Literal["auto", "0", "1"]


class OwnModelError(Exception):
    """Training the folder's model could not start or failed; the message says why."""


@dataclass(frozen=True)
class Decision:
    """Whether the demo trains on the folder, and why (printed before anything long starts)."""

    train: bool
    reason: str
    folder_classes: list[str]
    model_classes: list[str]
    labels: FolderLabels | None = None


@dataclass(frozen=True)
class OwnModel:
    """A finished run: its best checkpoint and held-out metrics."""

    run_dir: Path
    checkpoint: Path
    accuracy: float | None
    map_at_all: float | None
    epochs: int
    train_seconds: float
    action: str  # "reused" | "trained"


@dataclass(frozen=True)
class FolderLabels:
    kind: str
    classes: list[str]
    images: int
    train_images: int  # what one epoch reads: the folder less its held-out test part and validation part


def folder_labels(folder: Path, test_fraction: float = 0.2, val_fraction: float = 0.1) -> FolderLabels | None:
    """The labels of a single-label dataset at ``folder``; None for plain images (or a multi-label set, which the
    recipe does not train: it keeps the shipped model)."""
    from msir_data import DatasetError, detect_kind, open_dataset

    try:
        kind = detect_kind(folder)
        reader = open_dataset(kind, folder)
    except DatasetError:
        return None
    if reader.multi_label or len(reader.class_names) < 2:
        return None
    splits = reader.splits()
    pool = reader.count("train") if "train" in splits and "test" in splits else round(len(reader) * (1 - test_fraction))
    return FolderLabels(kind, list(reader.class_names), len(reader), round(pool * (1 - val_fraction)))


def decide(folder: Path, model_classes: Sequence[str], mode: TrainMode) -> Decision:
    """Train when the folder is labelled and its classes are not the model's (``auto``), always (``1``), never
    (``0``)."""
    found = folder_labels(folder)
    classes = found.classes if found else []
    model = list(model_classes)
    if not found:
        return Decision(False, "the folder is not a single-label labelled dataset", classes, model)
    if mode == "0":
        return Decision(False, "TRAIN=0 or --checkpoint: the checkpoint indexes it as it is", classes, model, found)
    if mode == "1":
        return Decision(True, "TRAIN=1", classes, model, found)
    if set(classes) == set(model):
        return Decision(False, "the shipped checkpoint already knows the folder's classes", classes, model, found)
    return Decision(
        True, f"the folder's {len(classes)} classes are not the shipped checkpoint's", classes, model, found
    )


def _recipe_texts(recipe: Path) -> list[str]:
    """The recipe and every config it ``extends:``, as text (what the run key hashes)."""
    texts, path = [], recipe
    while path is not None:
        text = path.read_text(encoding="utf-8")
        texts.append(text)
        parent = (yaml.safe_load(text) or {}).get("extends")
        path = (path.parent / parent) if parent else None
    return texts


def run_key(images_fingerprint: str, classes: Sequence[str], recipe: Path, overrides: Sequence[str]) -> str:
    digest = hashlib.sha256()
    # The parsed configs, not their text: a comment edited in the recipe does not retrain anyone's model.
    configs = [json.dumps(yaml.safe_load(text), sort_keys=True, default=str) for text in _recipe_texts(recipe)]
    for part in (images_fingerprint, json.dumps(list(classes)), *configs, json.dumps(list(overrides))):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def run_dir_for(var_dir: Path, folder: Path, key: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "data"
    return var_dir / "models" / f"{name[:40]}-{key[:12]}"


def recipe_image_size(recipe: Path, overrides: Sequence[str]) -> int:
    size: Any = None
    for text in _recipe_texts(recipe):  # the recipe first: the first file that sets it wins
        size = ((yaml.safe_load(text) or {}).get("data") or {}).get("image_size")
        if size is not None:
            break
    for item in overrides:
        if item.startswith("data.image_size="):
            size = yaml.safe_load(item.split("=", 1)[1])
    side = size if isinstance(size, int) else max(size or [32])
    return int(side)


def fitted_image_size(files: Sequence[Path], recipe_size: int, sample: int = 256) -> int | None:
    """A smaller training size for folders of small images (Fashion-MNIST's 28 px, CIFAR's 32 px): the median short
    side of up to ``sample`` files, rounded up to a multiple of 16 (at least 32). Upscaling adds no detail but costs
    the pixel count in time (64 px is 4x the work of 32 px). None when the images are as large as the recipe's."""
    from PIL import Image

    step = max(1, len(files) // sample)
    sides = []
    for path in list(files)[::step][:sample]:
        try:
            with Image.open(path) as img:
                sides.append(min(img.size))
        except OSError:
            continue
    if not sides:
        return None
    median = sorted(sides)[len(sides) // 2]
    size = max(32, -(-median // 16) * 16)
    return size if size < recipe_size else None


# How much a busy machine slows a one-thread run: wall/CPU = LOAD_SLOWDOWN * (load + 1) / cores. Fitted to the first
# benchmark runs (benchmarks/own_photos.py on this 2-core VM at load 7-13: 43-68 ms per image-epoch at 64 px,
# 10.6 ms at 32 px); the plain (load + 1) / cores overestimated them 1.5-2x, so the budget went unused.
LOAD_SLOWDOWN = 0.6


def estimate_seconds(train_images: int, epochs: float, image_size: int, load: float, cpus: int) -> float:
    """Wall seconds the run should take: the recipe's measured CPU cost per image-epoch, scaled by the pixel count
    and by how much a machine with this load slows a one-thread process."""
    share = max(1.0, LOAD_SLOWDOWN * (load + 1.0) / max(1, cpus))
    return CPU_SECONDS_PER_IMAGE_EPOCH_64PX * (image_size / 64) ** 2 * train_images * epochs * share


def epochs_for_budget(train_images: int, image_size: int, minutes: float, load: float, cpus: int) -> int:
    """The most whole epochs (1..60) that fit ``minutes`` by :func:`estimate_seconds` (the one-cycle schedule needs
    its length up front, so the budget picks the epochs rather than stopping a run midway)."""
    per_epoch = estimate_seconds(train_images, 1, image_size, load, cpus)
    return max(1, min(60, int(minutes * 60 // max(per_epoch, 1e-9))))


def resumed_epochs(run_dir: Path) -> int | None:
    """The epochs of an interrupted run in ``run_dir`` (a resume must keep its schedule), else None."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    epochs = (config.get("optim") or {}).get("epochs")
    return int(epochs) if isinstance(epochs, (int, float)) and epochs > 0 else None


def finished(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics when it finished (best checkpoint saved and evaluated on the held-out part)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or not (run_dir / "best.safetensors").is_file():
        return None
    return metrics


def own_model(run_dir: Path, metrics: dict[str, Any], action: str) -> OwnModel:
    test = metrics.get("test") or {}
    return OwnModel(
        run_dir,
        run_dir / "best.safetensors",
        test.get("accuracy"),
        test.get("map_at_all"),
        int(metrics.get("epochs") or 0),
        float(metrics.get("train_seconds") or 0.0),
        action,
    )


def train_command(
    folder: Path, run_dir: Path, epochs: int, overrides: Sequence[str], recipe: Path = RECIPE
) -> list[str]:
    """``python -m training.cli`` with the recipe: progress bars on (the recipe's parent turns them off for logs),
    retrieval mAP on the held-out part (``eval.retrieval_every`` > 0 turns it on for the test evaluation)."""
    sets = ["runtime.progress=true", f"eval.retrieval_every={max(1, epochs)}", *overrides]
    command = [sys.executable, "-m", "training.cli", "--config", str(recipe), "--data-root", str(folder)]
    command += ["--out", str(run_dir), "--name", f"own_{folder.resolve().name}"[:60], "--epochs", str(epochs)]
    for item in sets:
        command += ["--set", item]
    return command


def run_training(command: Sequence[str]) -> None:
    """Run msir-train in the foreground (its progress bar is the user's terminal); one thread by default."""
    env = {**os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    try:
        done = subprocess.run(list(command), env=env, cwd=REPO, check=False)
    except OSError as error:
        raise OwnModelError(f"cannot start msir-train: {error}") from error
    if done.returncode != 0:
        raise OwnModelError(
            f"msir-train stopped with exit code {done.returncode} (its message is above); run the demo again to "
            "continue where it stopped, or TRAIN=0 to index the folder with the shipped checkpoint"
        )


__all__ = [
    "Decision",
    "FolderLabels",
    "OwnModel",
    "OwnModelError",
    "decide",
    "epochs_for_budget",
    "estimate_seconds",
    "finished",
    "fitted_image_size",
    "folder_labels",
    "own_model",
    "resumed_epochs",
    "run_dir_for",
    "run_key",
    "run_training",
    "train_command",
]
