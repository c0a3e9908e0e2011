"""Helpers of the service tests: generated class images, the collection fixture type, a real msir-serve."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


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
    )
    if fixture.database_url:
        env["MSIR_DATABASE_URL"] = fixture.database_url
    # The server runs in a temporary folder (no stray .env); the repository stays importable.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def start_server(fixture: Fixture, log_dir: Path, timeout_s: float = 60.0, **extra: str) -> LiveServer:
    port = free_port()
    log = log_dir / f"server-{port}.log"
    serve = Path(sys.executable).with_name("msir-serve")
    command = [str(serve)] if serve.exists() else [sys.executable, "-m", "app.cli"]
    with log.open("wb") as fh:
        process = subprocess.Popen(
            command, env=serve_env(fixture, port, **extra), cwd=log_dir, stdout=fh, stderr=subprocess.STDOUT
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"msir-serve exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise AssertionError(f"msir-serve not ready after {timeout_s} s:\n{server.output()}")


def stop_server(server: LiveServer, timeout_s: float = 30.0) -> int:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM: graceful shutdown
        try:
            server.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return int(server.process.returncode)


@contextlib.asynccontextmanager
async def async_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind httpx's ASGITransport (streams request bodies chunk by chunk)."""
    from app.main import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            yield client
