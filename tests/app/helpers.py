"""Helpers of the service tests: generated class images, the collection fixture type, a real msir-serve."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from app import server_process as harness
from app.server_process import ServerProcess
from app.server_process import free_port as free_port  # re-exported: the tests take it from here
from app.server_process import stop_server as stop_server
from app.settings import Settings
from indexer import Collection, NewImage

CLASSES = ["red", "green", "blue"]
PER_CLASS = 12
API_KEY = "test-key-0123456789"
# Index backends of the service tests: modules that run on both override the ``index_backend`` fixture.
BACKENDS = ["faiss", "milvus"]
REPO = Path(__file__).resolve().parents[2]
AUTH = {"X-API-Key": API_KEY}


def class_image(cls: int, i: int, size: int = 24) -> Image.Image:
    """Visually distinct classes: red squares, green horizontal stripes, blue discs, on noise."""
    rng = np.random.default_rng(1000 * cls + i)
    arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    if cls == 0:
        lo, hi = 3 + i % 4, size - 3 - i % 3
        arr[lo:hi, lo:hi] = (220, 30 + i % 40, 30)
    elif cls == 1:
        arr[(yy // (2 + i % 3)) % 2 == 0] = (30, 200 + i % 40, 40)
    else:
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3 + i % 3) ** 2
        arr[mask] = (40, 50, 210 + i % 40)
    return Image.fromarray(arr, "RGB")


def png_bytes(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@dataclass
class Fixture:
    """A collection directory plus what is needed to serve it."""

    directory: Path
    checkpoint: Path
    database_url: str | None
    image_paths: dict[str, list[Path]]

    def settings(self, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "collection_dir": self.directory,
            "database_url": self.database_url,
            "api_key": API_KEY,
            "device": "cpu",
            "thumbnail_cache_dir": self.directory / "thumbs",
            "runtime": "torch",  # as in serve_env: the default (auto) has its own tests
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def build_collection(
    directory: Path, checkpoint: Path, files: dict[str, list[Path]], url: str | None, backend: str = "faiss"
) -> None:
    items = [
        NewImage(path=p, labels=[name], split="train" if i < PER_CLASS - 3 else "test", source="fixture")
        for name, paths in files.items()
        for i, p in enumerate(paths)
    ]
    with Collection.create(directory, checkpoint, database_url=url, device="cpu", backend=backend) as col:
        report = col.add_images(items)
        assert len(report.added) == len(items), report


# The one server harness (app.server_process): tests call these names.
LiveServer = ServerProcess


def serve_env(fixture: Fixture, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSIR_")}
    env.update(
        MSIR_COLLECTION_DIR=str(fixture.directory),
        MSIR_HOST="127.0.0.1",
        MSIR_PORT=str(port),
        MSIR_DEVICE="cpu",
        MSIR_API_KEY=API_KEY,
        MSIR_THUMBNAIL_CACHE_DIR=str(fixture.directory / "thumbs"),
        MSIR_LOG_LEVEL="info",
        # The suite's servers compare answers with eager PyTorch and start often: torch unless a test asks for
        # auto or onnx (tests/app/test_runtime_auto.py covers the default).
        MSIR_RUNTIME="torch",
    )
    if fixture.database_url:
        env["MSIR_DATABASE_URL"] = fixture.database_url
    # The server runs in a temporary folder (no stray .env); the repository stays importable.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def start_server(fixture: Fixture, log_dir: Path, timeout_s: float = 60.0, **extra: str) -> LiveServer:
    port = free_port()
    serve = Path(sys.executable).with_name("msir-serve")
    command = [str(serve)] if serve.exists() else [sys.executable, "-m", "app.cli"]
    return harness.start_server(
        command, port=port, log=log_dir / f"server-{port}.log", env=serve_env(fixture, port, **extra), cwd=log_dir,
        timeout_s=timeout_s,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def async_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind httpx's ASGITransport (streams request bodies chunk by chunk)."""
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client
