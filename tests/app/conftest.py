"""Fixtures of the service tests: a tiny real collection (random-init mscfnet2, generated PNGs, 3 classes) on
SQLite and PostgreSQL, the app around it, and a real ``msir-serve`` process."""

from __future__ import annotations

import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

import models
from app.main import create_app
from tests.app.helpers import (
    CLASSES,
    PER_CLASS,
    Fixture,
    LiveServer,
    build_collection,
    class_image,
    start_server,
    stop_server,
)

with warnings.catch_warnings():
    # Starlette now prefers the httpx2 package for its TestClient; httpx still works.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("images")
    out: dict[str, list[Path]] = {}
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        out[name] = []
        for i in range(PER_CLASS):
            path = root / name / f"{i:03d}.png"
            class_image(c, i).save(path)
            out[name].append(path)
    return out


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = models.build("mscfnet2", 3, image_size=16)
    spec = models.PreprocessSpec(image_size=(16, 16), channels=3, resize="stretch")
    return models.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, class_names=CLASSES, preprocess=spec)


@pytest.fixture(scope="session")
def sqlite_template(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, image_files: dict[str, list[Path]]
) -> Path:
    directory = tmp_path_factory.mktemp("template") / "collection"
    build_collection(directory, checkpoint, image_files, None)
    return directory


@pytest.fixture(scope="session")
def milvus_template(
    tmp_path_factory: pytest.TempPathFactory, checkpoint: Path, image_files: dict[str, list[Path]]
) -> Path:
    """The same collection on the milvus backend (milvus-lite: milvus.db in the folder, released once built)."""
    directory = tmp_path_factory.mktemp("template-milvus") / "collection"
    build_collection(directory, checkpoint, image_files, None, backend="milvus")
    return directory


@pytest.fixture(scope="session")
def index_backend() -> str:
    """faiss by default; modules whose tests run on both backends override it with a parametrised fixture."""
    return "faiss"


def _template(request: pytest.FixtureRequest, backend: str) -> Path:
    path: Path = request.getfixturevalue("milvus_template" if backend == "milvus" else "sqlite_template")
    return path


@pytest.fixture
def sqlite_collection(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    index_backend: str,
    checkpoint: Path,
    image_files: dict[str, list[Path]],
) -> Fixture:
    """A private copy of the template (tests may write to it), on the module's index backend."""
    directory = tmp_path / "collection"
    shutil.copytree(_template(request, index_backend), directory)
    return Fixture(directory, checkpoint, None, image_files)


def _create_database(admin_url: str, name: str) -> str:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    engine.dispose()


@pytest.fixture
def postgres_collection(
    postgres_url: str, tmp_path: Path, checkpoint: Path, image_files: dict[str, list[Path]]
) -> Iterator[Fixture]:
    """The same collection with its metadata in a dedicated PostgreSQL database (dropped afterwards)."""
    name = f"msir_app_{uuid.uuid4().hex[:12]}"
    url = _create_database(postgres_url, name)
    directory = tmp_path / "collection"
    try:
        build_collection(directory, checkpoint, image_files, url)
        yield Fixture(directory, checkpoint, url, image_files)
    finally:
        drop_database(postgres_url, name)


@pytest.fixture(params=["sqlite", "sqlite-milvus", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_collection(
    request: pytest.FixtureRequest, tmp_path: Path, checkpoint: Path, image_files: dict[str, list[Path]]
) -> Fixture:
    """Both metadata databases, and the milvus index backend (SQLite metadata, milvus-lite vectors)."""
    if request.param == "sqlite-milvus":
        directory = tmp_path / "collection"
        shutil.copytree(_template(request, "milvus"), directory)
        return Fixture(directory, checkpoint, None, image_files)
    name = "sqlite_collection" if request.param == "sqlite" else "postgres_collection"
    fixture: Fixture = request.getfixturevalue(name)
    return fixture


@pytest.fixture(scope="module")
def shared_collection(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    index_backend: str,
    checkpoint: Path,
    image_files: dict[str, list[Path]],
) -> Fixture:
    """One copy per module (and backend) for tests that only read (opening a collection per test adds up)."""
    directory = tmp_path_factory.mktemp("shared") / "collection"
    shutil.copytree(_template(request, index_backend), directory)
    return Fixture(directory, checkpoint, None, image_files)


@pytest.fixture(scope="module")
def client(shared_collection: Fixture) -> Iterator[TestClient]:
    """The app on the module's read-only collection; tests that write use ``make_client`` or their own."""
    with TestClient(create_app(shared_collection.settings())) as c:
        yield c


@pytest.fixture
def make_client(sqlite_collection: Fixture) -> Iterator[Callable[..., TestClient]]:
    """A client for settings overrides: ``make_client(max_k=5)``."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        c = TestClient(create_app(sqlite_collection.settings(**overrides)))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


SHARED_SERVER_LIMIT = 1_000_000  # MSIR_MAX_UPLOAD_BYTES of the shared server


@pytest.fixture(scope="session")
def _shared_server_slot() -> Iterator[dict[str, LiveServer]]:
    slot: dict[str, LiveServer] = {}
    yield slot
    if "server" in slot:
        stop_server(slot["server"])


@pytest.fixture
def shared_server(
    _shared_server_slot: dict[str, LiveServer],
    tmp_path_factory: pytest.TempPathFactory,
    sqlite_template: Path,
    checkpoint: Path,
    image_files: dict[str, list[Path]],
) -> LiveServer:
    """A real msir-serve (SQLite, MSIR_MAX_K=20, 1 MB body limit) shared by the tests that do not stop it:
    starting one costs seconds. A test that stops it gets a fresh one started for whoever comes next."""
    server = _shared_server_slot.get("server")
    if server is None or server.process.poll() is not None:
        directory = tmp_path_factory.mktemp("live") / "collection"
        shutil.copytree(sqlite_template, directory)
        fixture = Fixture(directory, checkpoint, None, image_files)
        server = start_server(
            fixture, directory.parent, MSIR_MAX_K="20", MSIR_MAX_UPLOAD_BYTES=str(SHARED_SERVER_LIMIT)
        )
        _shared_server_slot["server"] = server
    return server
