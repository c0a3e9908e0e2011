"""The comparator of benchmarks/serve_latency.py: the first search endpoint a user writes.

A plain ``def`` FastAPI route (run in FastAPI's thread pool): Pillow decode, the same checkpoint and preprocessing
through ``models``, an exact ``faiss.IndexFlatIP`` over the same collection's vectors, top-k ids and scores plus the
arg-max class. No micro-batching, no database, no hashing, no kNN vote, no timings.

    python benchmarks/naive_peer.py --collection DIR --port 8123
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path
from typing import Annotated, Any

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, File, Form, UploadFile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import load_checkpoint, normalize, open_image, to_uint8  # noqa: E402


def load_vectors(collection: Path) -> tuple[np.ndarray, np.ndarray]:
    """The collection's stored embeddings (ids, float32 [N, D]) straight from its SQLite file."""
    with sqlite3.connect(collection / "metadata.db") as db:
        rows = db.execute("SELECT id, embedding FROM images ORDER BY id").fetchall()
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    return ids, np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])


def create_app(checkpoint: Path, collection: Path) -> FastAPI:
    loaded = load_checkpoint(checkpoint)
    model, spec, classes = loaded.model, loaded.meta.preprocess, loaded.meta.class_names
    ids, vectors = load_vectors(collection)
    index = faiss.IndexIDMap(faiss.IndexFlatIP(vectors.shape[1]))
    index.add_with_ids(vectors, ids)
    app = FastAPI()

    @app.post("/search")
    def search(image: Annotated[UploadFile, File()], k: Annotated[int, Form()] = 10) -> dict[str, Any]:
        img = open_image(image.file.read())
        x = normalize(torch.from_numpy(to_uint8(img, spec))[None], spec)
        with torch.inference_mode():
            out = model(x)
        emb = F.normalize(out.embedding, dim=1).numpy()
        scores, found = index.search(emb, k)
        return {
            "neighbours": [{"id": int(i), "score": float(s)} for i, s in zip(found[0], scores[0], strict=True)],
            "prediction": classes[int(out.logits[0].argmax())],
        }

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collection", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="default: the one in the collection's manifest.json")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch and FAISS threads (msir's default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    checkpoint = args.checkpoint
    if checkpoint is None:
        import json

        checkpoint = Path(json.loads((args.collection / "manifest.json").read_text())["checkpoint"]["path"])
    app = create_app(checkpoint, args.collection)
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
