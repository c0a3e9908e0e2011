"""The own-photos recipe against the plain MSCFNet-4 config, on a class-per-folder set assembled from CIFAR-10.

The dataset stands in for "a few thousand of your own photos in a few classes": ``--classes`` CIFAR-10 classes,
the first ``--per-class`` training images of each, upscaled (bicubic) to ``--size`` px and saved as JPEG in ONE
folder per class (no train/test split), under ``~/.cache/msir/datasets/`` (never in the repository). msir-train
then holds out its stratified test and validation sets, as it does for a user's folder.

Both arms train through the real trainer and are evaluated like the paper grid (benchmarks/reproduce.py): test
accuracy, and retrieval with the held-out test images as queries against the training images.

- plain: ``configs/cnn/mscfnet4_cifar10.yaml`` with the README's user overrides (``data.kind=imagefolder``,
  ``data.stats=imagenet``) at ``--size`` px: the paper model, Adam, 10 epochs, no augmentation;
- recipe: ``configs/cnn/own_photos_cpu.yaml``.

    .venv/bin/python -m benchmarks.own_photos compare [--per-class 400 --size 64 --runs-dir ~/.cache/msir/own_photos]

Without ``compare``, it runs the one-command benchmark instead (``benchmarks/own_photos_folders.py``: ``make demo
DATA=<folder>``'s pipeline on folders built from Fashion-MNIST, CIFAR-10 and ISIC 2018).

Saves ``results/own_photos/<arm>/metrics.json`` and ``results/own_photos/comparison.{json,md}`` naming the device
(a 2-core machine shared with other jobs: wall times include waiting for the CPU; process CPU seconds are given).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.reproduce import Entry, run_entry  # noqa: E402

logger = logging.getLogger("benchmarks.own_photos")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog")
ARMS = {
    "plain": (REPO / "configs" / "cnn" / "mscfnet4_cifar10.yaml", ["data.kind=imagefolder", "data.stats=imagenet"]),
    "recipe": (REPO / "configs" / "cnn" / "own_photos_cpu.yaml", []),
}


def make_dataset(source: Path, target: Path, classes: tuple[str, ...], per_class: int, size: int) -> Path:
    """Write ``target/<class>/NNNN.jpg``: the first ``per_class`` images of each class, upscaled; idempotent."""
    done = target / ".complete"
    if done.exists():
        return target
    for name in classes:
        files = sorted((source / "train" / name).glob("*.jpg"))[:per_class]
        if len(files) < per_class:
            raise SystemExit(f"{source / 'train' / name}: {len(files)} images, need {per_class}")
        (target / name).mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(files):
            with Image.open(f) as img:
                img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
                    target / name / f"{i:04d}.jpg", quality=95
                )
    done.write_text(json.dumps({"source": str(source), "classes": classes, "per_class": per_class, "size": size}))
    return target


def compare_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar10", type=Path, default=Path("~/.cache/msir/datasets/cifar10"))
    ap.add_argument("--per-class", type=int, default=400)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--arms", default="plain,recipe")
    ap.add_argument("--runs-dir", type=Path, default=Path("~/.cache/msir/own_photos"))
    ap.add_argument("--out", type=Path, default=REPO / "results" / "own_photos")
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.cifar10.expanduser()
    data = make_dataset(
        source,
        source.parent / f"cifar10_{len(CLASSES)}class_{args.per_class}_{args.size}px",
        CLASSES,
        args.per_class,
        args.size,
    )
    rows = {}
    for arm in args.arms.split(","):
        config, extra = ARMS[arm]
        overrides = [f"data.root={data}", f"data.image_size={args.size}", "runtime.device=cpu",
                     "runtime.num_threads=1", "runtime.progress=false", *extra, *args.overrides]  # fmt: skip
        entry = Entry(arm, "own-photos", data.name, arm, {"own-photos": config})
        cpu0, wall0 = time.process_time(), time.perf_counter()
        runs = args.runs_dir.expanduser()
        record = run_entry(entry, "own-photos", runs / "records", runs, overrides=overrides)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        rows[arm] = {
            "config": record["config"],
            "overrides": overrides,
            "epochs": record["budget"]["epochs"],
            "train_images": record["budget"]["train_images"],
            "test_images": record["budget"]["test_images"],
            "parameters": record["parameters"],
            "accuracy": record["classification"]["accuracy"],
            "f1_macro": record["classification"]["f1_macro"],
            "map_at_all": record["retrieval"]["map_at_all"],
            "precision_at_10": record["retrieval"]["precision_at_k"]["10"],
            "train_seconds": round(record["train_seconds"], 1),
            "process_cpu_seconds_train_and_eval": round(cpu, 1),
            "wall_seconds_train_and_eval": round(wall, 1),
            "device": record["device"]["label"],
        }
        (args.out / arm).mkdir(parents=True, exist_ok=True)
        (args.out / arm / "metrics.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    result = {
        "benchmark": "own_photos",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": {"folder": data.name, "classes": CLASSES, "per_class": args.per_class, "size_px": args.size},
        "machine": "2-core VM shared with other jobs: wall times include waiting for the CPU",
        "load_average_1min_end": round(os.getloadavg()[0], 2),
        "arms": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# Own-photos recipe vs plain MSCFNet-4 ({result['date']})",
        "",
        f"{len(CLASSES)} CIFAR-10 classes x {args.per_class} images upscaled to {args.size} px, one folder per "
        f"class; msir-train's held-out test split as queries, its training images as the database. "
        f"{result['machine']}.",
        "",
        "| arm | config | epochs | accuracy | macro F1 | mAP@all | P@10 | train s | process CPU s (train+eval) "
        "| device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        lines.append(
            f"| {arm} | `{r['config']}` | {r['epochs']:g} | {100 * r['accuracy']:.2f} % | {r['f1_macro']:.4f} | "
            f"{r['map_at_all']:.4f} | {r['precision_at_10']:.4f} | {r['train_seconds']} | "
            f"{r['process_cpu_seconds_train_and_eval']} | {r['device']} |"
        )
    (args.out / "comparison.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    if sys.argv[1:2] == ["compare"]:
        compare_main(sys.argv[2:])
    else:
        from benchmarks.own_photos_folders import main as folders_main

        folders_main(sys.argv[1:])


if __name__ == "__main__":
    main()
