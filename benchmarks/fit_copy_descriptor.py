"""Fit the copy descriptor's learned map (``models/copy_descriptor.npz``) on CIFAR-10 *training* images.

For ``--images`` training images (seeded choice) and the copies :data:`models.copy_descriptor.COPIES` makes of
each (JPEG re-encodes, resizes, a 10 % crop, a flip, a colour change), the raw features of
:mod:`models.copy_descriptor` are computed and :func:`models.copy_descriptor.fit_projection` learns the whitening
by copy-minus-original differences and the principal directions of the whitened originals. The test images that
``benchmarks/duplicates.py`` measures are never seen here.

Writes ``models/copy_descriptor.npz`` (float32 arrays ``mean`` and ``projection``; no pickle) and
``results/benchmarks/copy_descriptor_fit.json`` (what was fitted on). If the map changes, bump
``models.copy_descriptor.VERSION`` and rerun ``benchmarks/duplicates.py`` (the threshold is calibrated there).
Run: ``OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/fit_copy_descriptor.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.index_throughput import ensure_dataset  # noqa: E402
from models import copy_descriptor as cd  # noqa: E402

logger = logging.getLogger("fit_copy_descriptor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="CIFAR-10 training images used (seeded choice).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=cd.PROJECTION_FILE)
    parser.add_argument("--report", type=Path, default=REPO / "results" / "benchmarks" / "copy_descriptor_fit.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    files = sorted((ensure_dataset() / "train").glob("*/*.jpg"))
    rng = np.random.default_rng(args.seed)
    files = [files[i] for i in np.sort(rng.choice(len(files), size=min(args.images, len(files)), replace=False))]
    started = time.perf_counter()
    small = np.zeros((len(files), 1 + len(cd.COPIES), cd.SIDE, cd.SIDE, 3), np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as raw:
            img = raw.convert("RGB")
        for j, im in enumerate([img, *(fn(img) for fn in cd.COPIES.values())]):
            small[i, j] = cd.small_rgb(im)
    raw_features = cd.raw_features(small)
    mean, projection = cd.fit_projection(raw_features[:, 0], raw_features[:, 1:])
    buffer = io.BytesIO()
    np.savez(buffer, mean=mean, projection=projection)
    args.out.write_bytes(buffer.getvalue())
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "version": cd.VERSION,
        "data": "CIFAR-10 training images (never the test images benchmarks/duplicates.py measures)",
        "images": len(files),
        "seed": args.seed,
        "augmentations": list(cd.COPIES),
        "raw_dim": cd.RAW_DIM,
        "dim": cd.DIM,
        "seconds": round(time.perf_counter() - started, 1),
        "file": str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else str(args.out),
        "bytes": args.out.stat().st_size,
    }
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s (%d bytes) from %d training images", args.out, report["bytes"], len(files))


if __name__ == "__main__":
    main()
