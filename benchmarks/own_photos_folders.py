"""``make demo DATA=<folder>``'s pipeline on labelled folders msir's shipped model never saw, 15 minutes of training.

Each folder is a class-folder layout of image files (``<folder>/<class>/NNNN.png``, no test split: msir-train
carves its deterministic held-out 20 %), written once under ``~/.cache/msir/datasets/own_photos/`` from data at
hand (never downloaded):

- ``fashion-mnist``: Fashion-MNIST product photos (Debian's ``dataset-fashion-mnist``,
  /usr/share/datasets/fashion-mnist), 10 classes x ``--per-class`` training images, 28 px grey;
- ``cifar10-6``: 6 CIFAR-10 classes (airplane, automobile, bird, cat, deer, dog: not the shipped model's 10, so the
  demo trains) x ``--per-class``, upscaled (bicubic) to 64 px (/work/shared/datasets/cifar10-jpg.tar);
- ``isic2018``: ISIC 2018 task 3 dermoscopy images at 64 px, at most ``--per-class`` per diagnosis (7 classes, the
  rare ones whole) (/work/shared/datasets/isic2018_task3_64px.tar).

Each runs ``python -m app.quickstart --data <folder> --build-only --train-minutes 15`` (train, evaluate on the
held-out part, index the folder with the new model), one folder after another, with one thread (OMP_NUM_THREADS=1;
the recipe sets runtime.num_threads=1) under the caller's nice. Writes results/benchmarks/own_photos.{json,md}:
held-out accuracy and mAP@all (held-out images querying each other), epochs, training minutes, wall minutes of the
whole command, the device and the load average.

    nice -n 10 .venv/bin/python -m benchmarks.own_photos [--folders fashion-mnist,cifar10-6,isic2018]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.own_photos")
DATASETS = Path("/work/shared/datasets")
CACHE = Path("~/.cache/msir/datasets/own_photos").expanduser()
OUT = REPO / "results" / "benchmarks"
FASHION = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
CIFAR6 = ("airplane", "automobile", "bird", "cat", "deer", "dog")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def build_fashion(target: Path, per_class: int) -> None:
    root = Path("/usr/share/datasets/fashion-mnist")
    images, labels = _idx(root / "train-images-idx3-ubyte.gz"), _idx(root / "train-labels-idx1-ubyte.gz")
    for c, name in enumerate(FASHION):
        (target / name).mkdir(parents=True, exist_ok=True)
        for i, row in enumerate(np.flatnonzero(labels == c)[:per_class]):
            Image.fromarray(images[row]).save(target / name / f"{i:04d}.png")


def _extract(tar_name: str, inner: str) -> Path:
    base = Path("~/.cache/msir/datasets").expanduser()
    if not (base / inner).is_dir():
        with tarfile.open(DATASETS / tar_name) as tar:
            tar.extractall(base, filter="data")
    return base / inner


def build_cifar6(target: Path, per_class: int) -> None:
    source = _extract("cifar10-jpg.tar", "cifar10")
    for name in CIFAR6:
        files = sorted((source / "train" / name).glob("*.jpg"))[:per_class]
        (target / name).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            with Image.open(f) as img:
                img.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC).save(target / name / f"{i:04d}.png")


def build_isic(target: Path, per_class: int) -> None:
    source = _extract("isic2018_task3_64px.tar", "isic2018_task3_64px")
    images = {p.stem: p for p in (source / "images").rglob("*") if p.is_file()}
    with open(source / "ISIC2018_Task3_Training_GroundTruth.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [c for c in rows[0] if c != "image"]
    taken = dict.fromkeys(classes, 0)
    for row in sorted(rows, key=lambda r: r["image"]):
        label = max(classes, key=lambda c: float(row[c]))
        if taken[label] >= per_class or row["image"] not in images:
            continue
        (target / label).mkdir(parents=True, exist_ok=True)
        with Image.open(images[row["image"]]) as img:
            img.convert("RGB").save(target / label / f"{row['image']}.png")
        taken[label] += 1


BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "fashion-mnist": build_fashion,
    "cifar10-6": build_cifar6,
    "isic2018": build_isic,
}


def folder(name: str, per_class: int) -> Path:
    """The benchmark folder, written once (a ``.complete`` marker; a partial one is rebuilt)."""
    target = CACHE / f"{name}-{per_class}"
    if not (target / ".complete").exists():
        import shutil

        shutil.rmtree(target, ignore_errors=True)
        BUILDERS[name](target, per_class)
        (target / ".complete").write_text("", encoding="utf-8")
    return target


def cpu_label() -> str:
    from training.runinfo import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, 1 thread"


def run_one(name: str, data: Path, var_dir: Path, minutes: float, retrain: bool = False) -> dict[str, object]:
    from app.own_model import finished

    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    command = [sys.executable, "-m", "app.quickstart", "--data", str(data), "--build-only", "--var-dir", str(var_dir)]
    command += ["--train-minutes", f"{minutes:g}", *(["--train", "1"] if retrain else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSIR_RUNTIME": os.environ.get("MSIR_RUNTIME", "auto")}
    rc = subprocess.run(command, cwd=REPO, env=env, check=False).returncode
    wall = time.perf_counter() - started
    runs = sorted((var_dir / "models").glob(f"{data.name}-*"), key=lambda p: p.stat().st_mtime)
    metrics = finished(runs[-1]) if runs else None
    test = (metrics or {}).get("test") or {}
    summary = json.loads((runs[-1] / "run.json").read_text())["dataset"] if runs else {}
    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    return {
        "folder": name,
        "path": str(data),
        "classes": len(classes),
        "images": sum(1 for _ in data.rglob("*.png")),
        "train_images": summary.get("train"),
        "held_out_images": summary.get("test"),
        "exit_code": rc,
        "epochs": (metrics or {}).get("epochs"),
        "accuracy": test.get("accuracy"),
        "map_at_all": test.get("map_at_all"),
        "train_minutes": round(float((metrics or {}).get("train_seconds") or 0) / 60, 2),
        "command_wall_minutes": round(wall / 60, 2),
        "load_average_1min_start": round(load0, 2),
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "device": cpu_label(),
    }


def git_sha() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def earlier_rows(started: str) -> list[dict[str, object]]:
    """Rows of earlier invocations (kept: a rerun with a changed recipe is reported beside the first run)."""
    try:
        earlier = json.loads((OUT / "own_photos.json").read_text(encoding="utf-8"))
        rows = earlier["folders"]
    except (OSError, ValueError, KeyError):
        return []
    for r in rows:  # rows written before runs were labelled: the file's date and an unrecorded commit
        r.setdefault("invocation", f"written {str(earlier.get('date', '?'))[:16].replace('T', ' ')}")
        r.setdefault("git_sha", "not recorded")
        r.setdefault("device", earlier.get("device", "not recorded"))
    return [r for r in rows if isinstance(r, dict) and r.get("invocation") != started]


def write(rows: list[dict[str, object]], minutes: float, per_class: int) -> None:
    result = {
        "benchmark": "own_photos (make demo DATA=<folder>: train, evaluate, index)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": "2-core VM shared with other jobs (load averages per row): wall times include waiting for the CPU",
        "training_budget_minutes": minutes,
        "per_class": per_class,
        "targets": {"accuracy": 0.85, "map_at_all": 0.78},
        "folders": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "own_photos.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    def f(v: object, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        f"# make demo DATA=<folder>: own model in {minutes:g} minutes of training ({result['date']})",
        "",
        f"Class folders of at most {per_class} images per class, msir-train's deterministic held-out 20 % as the "
        "test part (accuracy; mAP@all with the held-out images querying each other). "
        f"Device per row; {result['machine']}. Targets: accuracy >= 0.85, mAP@all >= 0.78.",
        "",
        "| run (UTC, commit) | folder | classes | images | epochs | accuracy | mAP@all | train min | command min "
        "| load start/end | exit | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['invocation']}, {r['git_sha']} | {r['folder']} | {r['classes']} | {r['images']} | {r['epochs']} | "
            f"{f(r['accuracy'], '.4f')} | "
            f"{f(r['map_at_all'], '.4f')} | {r['train_minutes']} | {r['command_wall_minutes']} | "
            f"{r['load_average_1min_start']}/{r['load_average_1min_end']} | {r['exit_code']} | {r['device']} |"
        )
    (OUT / "own_photos.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folders", default=",".join(BUILDERS))
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--var-dir", type=Path, default=Path("~/.cache/msir/own_photos_bench"))
    ap.add_argument("--retrain", action="store_true", help="train afresh when a finished model exists (--train 1)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = args.folders.split(",")
    data = {name: folder(name, args.per_class) for name in names}  # all folders first: a failure shows early
    started, sha = datetime.now(UTC).strftime("%Y-%m-%d %H:%M"), git_sha()
    rows = earlier_rows(started)
    for name in names:
        row = run_one(name, data[name], args.var_dir.expanduser(), args.minutes, retrain=args.retrain)
        rows.append({"invocation": started, "git_sha": sha, **row})
        write(rows, args.minutes, args.per_class)  # after each folder: a partial run still leaves its rows


if __name__ == "__main__":
    main()
