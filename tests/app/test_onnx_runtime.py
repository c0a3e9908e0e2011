"""Serving the demo with MSIR_RUNTIME=onnx over HTTP: the shipped demo checkpoint exported with msir-export, a
collection of demo images indexed with ``msir-index build --runtime onnx``, a real msir-serve answering searches and
classifications that agree with PyTorch, and a stale export (made from other weights)
exported again."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import models
from indexer import Collection
from indexer.cli import app as index_cli
from indexer.embedder import Embedder
from models.export_cli import main as export_main
from models.onnx import onnx_paths
from msir_client import Client
from tests.app.helpers import Fixture, LiveServer, start_server, stop_server
from tests.app.test_quickstart import shipped_checkpoint

PER_CLASS = 6


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(checkpoint copy with its ONNX export, images folder, collection indexed with ONNX Runtime)."""
    root = tmp_path_factory.mktemp("demo-onnx")
    weights = shipped_checkpoint()
    for path in (weights, weights.with_suffix(".json")):
        shutil.copy2(path, root / path.name)
    checkpoint = root / weights.name
    export_main([str(checkpoint), "--format", "onnx"])
    images = root / "images"
    for class_dir in sorted((Path(models.__file__).parents[1] / "demo" / "images").iterdir()):
        (images / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.glob("*.jpg"))[:PER_CLASS]:
            shutil.copy2(path, images / class_dir.name / path.name)
    collection = root / "collection"
    result = CliRunner().invoke(
        index_cli,
        [
            "build",
            str(collection),
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(images),
            "--runtime",
            "onnx",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return checkpoint, images, collection


@pytest.fixture(scope="module")
def onnx_server(demo_onnx: tuple[Path, Path, Path]) -> Iterator[LiveServer]:
    checkpoint, _images, collection = demo_onnx
    live = start_server(Fixture(collection, checkpoint, None, {}), collection.parent, MSIR_RUNTIME="onnx")
    yield live
    stop_server(live)


def test_the_demo_served_with_onnx_runtime_agrees_with_pytorch(
    demo_onnx: tuple[Path, Path, Path], onnx_server: LiveServer
) -> None:
    checkpoint, images, collection = demo_onnx
    assert "runtime onnx" in onnx_server.output()
    torch_embedder = Embedder(checkpoint, "cpu")
    spec = torch_embedder.spec
    queries = [sorted((images / c).glob("*.jpg"))[1] for c in ("cat", "ship", "truck")]
    with Client(onnx_server.url) as msir:
        assert msir.collection().size == 10 * PER_CLASS
        for query in queries:
            found = msir.search(query, k=5)
            # The query is stored (indexed by ONNX Runtime): it comes back first at cosine ~1.
            assert found.neighbours[0].score == pytest.approx(1.0, abs=1e-4)
            assert found.neighbours[0].labels == [query.parent.name]
            # The served classifier head matches PyTorch's on the same image.
            logits = torch_embedder.embed_uint8(models.to_uint8(models.open_image(query), spec)[None]).logits[0]
            expected = torch.softmax(torch.from_numpy(logits).double(), 0).numpy()
            served = {p.label: p.probability for p in msir.classify(query).predictions}
            for i, name in enumerate(torch_embedder.class_names):
                assert served[name] == pytest.approx(expected[i], abs=1e-4)
    # The vectors ONNX Runtime stored match PyTorch's embeddings of the same files.
    with Collection.open(collection, device="cpu") as col:
        records, _ = col.list_images(limit=5)
        for record in records:
            assert record.path is not None
            path = Path(record.path)
            path = path if path.is_absolute() else collection / path
            expected_vec = torch_embedder.embed_images([models.open_image(path)]).embeddings[0]
            stored = col.vector(record.id)
            assert stored is not None and float(np.abs(stored - expected_vec).max()) <= 1e-4


def test_an_export_of_other_weights_is_made_again(demo_onnx: tuple[Path, Path, Path], tmp_path: Path) -> None:
    checkpoint, _, collection = demo_onnx
    # The export beside the served checkpoint is replaced by one made from a different (random) mscfnet4 with the
    # same metadata otherwise: the server must not serve it, but export these weights again and serve those.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    meta = models.read_checkpoint_meta(checkpoint)
    torch.manual_seed(3)
    other = models.save_checkpoint(
        other_dir / checkpoint.stem,
        models.build("mscfnet4", 10, image_size=32, **meta.model.get("options", {})),
        class_names=meta.class_names,
        preprocess=meta.preprocess,
    )
    export_main([str(other), "--format", "onnx"])
    served = tmp_path / "served"
    served.mkdir()
    for path in (checkpoint, checkpoint.with_suffix(".json")):
        shutil.copy2(path, served / path.name)
    for path in onnx_paths(other):
        shutil.copy2(path, served / path.name)
    _, served_json = onnx_paths(served / checkpoint.name)
    assert json.loads(served_json.read_text())["weights_sha256"] != meta.weights_sha256
    server = start_server(
        Fixture(collection, served / checkpoint.name, None, {}),
        tmp_path,
        MSIR_RUNTIME="onnx",
        MSIR_CHECKPOINT=str(served / checkpoint.name),
    )
    try:
        assert "exported from other weights" in server.output()
        assert "runtime onnx" in server.output()
    finally:
        stop_server(server)
    assert json.loads(served_json.read_text())["weights_sha256"] == meta.weights_sha256


def readme_client_example() -> str:
    text = (Path(models.__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    (example,) = [b for b in blocks if "from msir_client import" in b]
    return example


def test_the_readme_client_example_runs_as_written(onnx_server: LiveServer, tmp_path: Path) -> None:
    """The README's Python example, unchanged, against a server of the demo checkpoint (MSIR_URL points it there;
    its working folder has the demo's images and the API key file where `make demo` puts them)."""
    import subprocess
    import sys

    from tests.app.helpers import API_KEY, REPO

    (tmp_path / "var" / "demo").mkdir(parents=True)
    (tmp_path / "var" / "demo" / "api_key").write_text(API_KEY + "\n")
    (tmp_path / "demo").symlink_to(REPO / "demo")
    env = {**os.environ, "MSIR_URL": onnx_server.url, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", readme_client_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"ok {10 * PER_CLASS} images"
    assert lines[-1].startswith("404 image_not_found")
