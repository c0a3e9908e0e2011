"""The default runtime (auto): the ONNX export is made, cached and verified by whoever needs it first (the indexer,
the demo, the server), a stale cache is exported again, torch runs instead with one logged reason when ONNX Runtime
cannot, an explicit MSIR_RUNTIME=onnx that cannot run is a start-up error; and the server warms up before /readyz
says ready."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

import models.onnx as onnx_module
from app.main import create_app
from app.service import WARMUP_PASSES, Service
from app.settings import Settings
from indexer import CollectionError
from indexer.embedder import Embedder
from models.onnx import ensure_export, onnx_paths
from tests.app.helpers import Fixture


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Path:
    """A copy of the suite's tiny checkpoint with its export made once for the session (tests copy both)."""
    folder = tmp_path_factory.mktemp("exported")
    for path in (checkpoint, checkpoint.with_suffix(".json")):
        shutil.copy2(path, folder / path.name)
    ensure_export(folder / checkpoint.name)
    return folder / checkpoint.name


def _copy(checkpoint: Path, folder: Path, *, with_export: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [checkpoint, checkpoint.with_suffix(".json")] + (list(onnx_paths(checkpoint)) if with_export else [])
    for path in paths:
        shutil.copy2(path, folder / path.name)
    return folder / checkpoint.name


def test_a_verified_cache_is_reused_and_a_stale_one_exported_again(exported: Path, tmp_path: Path) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt")
    onnx_path, json_path = onnx_paths(checkpoint)
    graph = onnx_path.read_bytes()
    assert ensure_export(checkpoint) == onnx_path
    assert onnx_path.read_bytes() == graph, "a cache that verifies is used as it is"
    record = json.loads(json_path.read_text())
    assert record["weights_sha256"] == models_sha(checkpoint)
    # Stale: recorded as made from other weights.
    record["weights_sha256"] = "0" * 64
    json_path.write_text(json.dumps(record))
    assert ensure_export(checkpoint) == onnx_path
    assert json.loads(json_path.read_text())["weights_sha256"] == models_sha(checkpoint)
    # Changed graph: its sha256 no longer matches the record.
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    ensure_export(checkpoint)
    assert json.loads(json_path.read_text())["onnx"]["sha256"] == onnx_module.sha256_file(onnx_path)


def test_a_cache_whose_outputs_differ_from_torch_is_exported_again(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt")
    onnx_path, _ = onnx_paths(checkpoint)
    before = onnx_path.stat().st_mtime_ns
    exports: list[Path] = []
    real_export = onnx_module.export_onnx

    def counting_export(*args: object, **kwargs: object) -> Path:
        path = real_export(*args, **kwargs)  # type: ignore[arg-type]
        exports.append(path)
        return path

    monkeypatch.setattr(onnx_module, "export_onnx", counting_export)
    monkeypatch.setattr(onnx_module, "_agrees_with_torch", lambda *a, **k: 1.0)  # the numerical check fails
    assert ensure_export(checkpoint) == onnx_path
    assert exports == [onnx_path]
    assert onnx_path.stat().st_mtime_ns != before


def test_the_export_goes_to_the_collection_when_the_checkpoint_folder_is_read_only(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt", with_export=False)
    cache = tmp_path / "collection"
    # Tests run as root here, where chmod cannot make a folder read-only: the writability check is what is replaced.
    monkeypatch.setattr(onnx_module, "_writable", lambda folder: Path(folder) != checkpoint.parent)
    path = ensure_export(checkpoint, [cache])
    assert path == cache / onnx_paths(checkpoint)[0].name
    assert not onnx_paths(checkpoint)[0].exists()
    embedder = Embedder(checkpoint, "cpu", "auto", onnx_cache_dir=cache)
    assert embedder.runtime == "onnx"
    assert embedder._onnx is not None and embedder._onnx.path == path


def test_auto_runs_onnx_and_agrees_with_torch(exported: Path, tmp_path: Path) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt")
    auto = Embedder(checkpoint, "cpu", "auto")
    eager = Embedder(checkpoint, "cpu", "torch")
    assert (auto.runtime, eager.runtime) == ("onnx", "torch")
    shape = (2, auto.spec.channels, *auto.spec.image_size)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    got, want = auto.embed_uint8(pixels), eager.embed_uint8(pixels)
    assert np.abs(got.embeddings - want.embeddings).max() <= 1e-4
    assert np.abs(got.logits - want.logits).max() <= 1e-4


def test_auto_falls_back_to_torch_with_one_reason_without_onnxruntime(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with caplog.at_level(logging.INFO, logger="indexer.embedder"):
        embedder = Embedder(checkpoint, "cpu", "auto")
    assert embedder.runtime == "torch"
    reasons = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime auto: torch")]
    assert len(reasons) == 1 and "not installed" in reasons[0]
    with pytest.raises(CollectionError, match="runtime onnx: ONNX Runtime is not installed"):
        Embedder(checkpoint, "cpu", "onnx")


def test_the_default_server_runtime_is_auto_and_serves_onnx(
    sqlite_collection: Fixture, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint = _copy(exported, tmp_path / "ckpt")
    default = Settings.model_fields["runtime"].default
    assert default == "auto"
    settings = sqlite_collection.settings(checkpoint=checkpoint, runtime=default)

    async def check() -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            assert app.state.service.collection.embedder.runtime == "onnx"

    anyio.run(check)


def test_ready_only_after_the_warm_up(sqlite_collection: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz is 503 while the warm-up runs (held open here by an event), 200 once it has finished, and the warm-up
    ran forward passes and a search first."""
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []
    real_warm_up, real_forward, real_search = Service._warm_up, Service._forward, Service._timed_search

    def gated_warm_up(self: Service) -> None:
        entered.set()
        assert release.wait(60), "the test never released the warm-up"
        real_warm_up(self)
        calls.append("warm-up done")

    def forward(self: Service, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        calls.append(f"forward {len(batch)}")
        return real_forward(self, batch)

    def search(self: Service, *args: object, **kwargs: object) -> object:
        calls.append("search")
        return real_search(self, *args, **kwargs)

    monkeypatch.setattr(Service, "_warm_up", gated_warm_up)
    monkeypatch.setattr(Service, "_forward", forward)
    monkeypatch.setattr(Service, "_timed_search", search)
    app = create_app(sqlite_collection.settings())

    async def check() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            started, stop = anyio.Event(), anyio.Event()

            async def serve() -> None:
                async with app.router.lifespan_context(app):
                    started.set()
                    await stop.wait()

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                assert await anyio.to_thread.run_sync(entered.wait, 60)
                waiting = await client.get("/readyz")
                assert waiting.status_code == 503
                assert calls == []
                release.set()
                await started.wait()
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                stop.set()

    anyio.run(check)
    warm = calls[: calls.index("warm-up done")]
    assert warm.count("forward 1") >= WARMUP_PASSES and "forward 2" in warm and "search" in warm


def models_sha(checkpoint: Path) -> str:
    from models import read_checkpoint_meta

    return read_checkpoint_meta(checkpoint).weights_sha256
