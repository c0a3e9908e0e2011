"""Fixtures of the indexer tests: a real tiny checkpoint, distinct images on disk, SQLite and PostgreSQL URLs.

The ``database_url`` fixture runs a test on SQLite (None: ``metadata.db`` in the collection folder) and on
PostgreSQL (marked ``postgres``; it builds on ``postgres_url`` from tests/conftest.py, which skips without a
server and fails when CI=true). Each PostgreSQL test gets its own schema (``search_path`` in the URL), dropped
afterwards, so parallel runs never share tables.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

import models
from indexer.vectors import milvus_store
from models import PreprocessSpec
from tests.indexer import milvus_server as milvus_standalone
from tests.indexer.backends import BACKENDS

CLASSES = ["red", "green", "blue"]


def write_images(folder: Path, n: int, *, seed: int = 0, size: int = 16, prefix: str = "img") -> list[Path]:
    """``n`` distinct PNGs: a class colour (cycling through CLASSES) plus noise, so neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        base = np.zeros((size, size, 3), np.float64)
        base[..., i % 3] = 200
        pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:04d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def write_labelled_folder(root: Path, n_per_class: int, *, seed: int = 0) -> Path:
    """An image-folder dataset ``root/<split>/<class>/*.png`` (train and test) of distinct images."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                base = np.zeros((16, 16, 3), np.float64)
                base[..., c] = 200
                pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    model = models.build("mscfnet2", num_classes=3, image_size=16)
    spec = PreprocessSpec(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return models.save_checkpoint(path, model, class_names=CLASSES, preprocess=spec)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models and indexes on a shared 2-core machine: OpenMP threads spinning against other processes cost
    20x more than they gain, so these tests run torch and FAISS single-threaded (restored afterwards)."""
    import faiss
    import torch

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt2") / "other", seed=1)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real Milvus standalone server (one per session, on 127.0.0.1 only; see
    tests/indexer/milvus_server.py), stopped by its PID at the end; skipped with the reason when it cannot run."""
    reason = milvus_standalone.unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = milvus_standalone.start(tmp_path_factory.mktemp("milvus-server"))
    logging.getLogger(__name__).info("Milvus standalone ready in %.1f s at %s", server.start_s, server.uri)
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The index backend: ``faiss`` (files in the folder), ``milvus`` (milvus-lite: ``milvus.db`` in the folder) or
    ``milvus-server`` (the same backend on a real Milvus server: collections created without a URI go to it)."""
    if request.param != "milvus-server":
        return str(request.param)
    uri = request.getfixturevalue("milvus_server")
    resolve = milvus_store.resolve_uri

    def on_server(recorded: str | None, directory: Path, override: str | None = None) -> str:
        return resolve(override or recorded or uri, directory)

    monkeypatch.setattr(milvus_store, "resolve_uri", on_server)
    return "milvus"


@contextlib.contextmanager
def fresh_schema(base: str, prefix: str) -> Iterator[str]:
    """A PostgreSQL URL bound to a new schema (``search_path``), dropped with everything in it afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (SQLite in the collection folder) or a PostgreSQL URL bound to a fresh schema."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_schema(request.getfixturevalue("postgres_url"), "msir_idx") as url:
        yield url
