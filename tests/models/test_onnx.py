"""ONNX export: every registry model ONNX can express, checked against PyTorch on real images (the demo's CIFAR-10
JPEGs), at several batch sizes through the dynamic batch axis; the export's own refusal of other weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from indexer.embedder import Embedder
from indexer.errors import CollectionError
from models.onnx import OnnxModel, export_onnx, onnx_paths

REPO = Path(__file__).resolve().parents[2]
DEMO_IMAGES = REPO / "demo" / "images"
# Every registry model (at 32x32, 3 channels). The full-size ViTs are the tiny ones' code at a larger width: they run
# in the slow suite only.
EXPORTABLE = ["mscfnet2", "mscfnet4", "cnn5", "resnet18", "resnet50", "msvit_tiny", "vit_tiny", "msvit", "vit"]
SLOW = {"msvit", "vit"}


def real_images(spec: models.PreprocessSpec, n: int) -> np.ndarray:
    files = sorted(DEMO_IMAGES.rglob("*.jpg"))[:: max(1, len(sorted(DEMO_IMAGES.rglob("*.jpg"))) // n)][:n]
    assert len(files) == n, "the demo's images are part of the repository"
    return np.stack([models.to_uint8(models.open_image(f), spec) for f in files])


def make_checkpoint(directory: Path, name: str, channels: int = 3) -> Path:
    torch.manual_seed(0)
    model = models.build(name, 10, in_channels=channels, image_size=32)
    spec = models.PreprocessSpec.for_dataset("cifar10", 32)
    return models.save_checkpoint(directory / name, model, class_names=[f"c{i}" for i in range(10)], preprocess=spec)


def test_every_registry_model_is_covered() -> None:
    # A new model must be added to EXPORTABLE (or documented as not expressible in ONNX).
    assert set(models.available()) == set(EXPORTABLE)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in EXPORTABLE])
def test_export_matches_pytorch_on_real_images(tmp_path: Path, name: str) -> None:
    checkpoint = make_checkpoint(tmp_path, name)
    onnx_path = export_onnx(checkpoint)
    assert onnx_path == onnx_paths(checkpoint)[0] and onnx_path.is_file()
    record = json.loads(onnx_paths(checkpoint)[1].read_text())
    meta = models.read_checkpoint_meta(checkpoint)
    assert record["preprocess"] == meta.preprocess.model_dump(mode="json")  # the spec travels with the graph
    assert record["weights_sha256"] == meta.weights_sha256
    assert record["onnx"]["input"]["shape"][0] == "batch"

    torch_embedder = Embedder(checkpoint, "cpu")
    onnx_embedder = Embedder(checkpoint, "cpu", runtime="onnx")
    images = real_images(meta.preprocess, 12)
    for batch in (images[:1], images[:5], images):  # the batch axis is dynamic
        expected = torch_embedder.embed_uint8(batch)
        got = onnx_embedder.embed_uint8(batch)
        assert got.embeddings.shape == expected.embeddings.shape
        assert float(np.abs(got.embeddings - expected.embeddings).max()) <= 1e-4
        assert float(np.abs(got.logits - expected.logits).max()) <= 1e-4


def test_an_export_of_other_weights_is_refused_then_made_again(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path, "mscfnet2")
    export_onnx(checkpoint)
    # Another checkpoint (other weights) given the first one's export.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    torch.manual_seed(1)
    other = models.save_checkpoint(
        other_dir / "mscfnet2",
        models.build("mscfnet2", 10, image_size=32),
        class_names=[f"c{i}" for i in range(10)],
        preprocess=models.PreprocessSpec.for_dataset("cifar10", 32),
    )
    for path in onnx_paths(checkpoint):
        shutil.copy(path, other_dir / path.name)
    meta = models.read_checkpoint_meta(other)
    with pytest.raises(models.CheckpointError, match="exported from other weights"):
        OnnxModel(meta, other)
    # The runtime never serves it: the stale export is replaced by one of these weights.
    embedder = Embedder(other, "cpu", runtime="onnx")
    assert embedder.runtime == "onnx"
    assert json.loads(onnx_paths(other)[1].read_text())["weights_sha256"] == meta.weights_sha256
    OnnxModel(meta, other)


def test_a_changed_graph_and_a_missing_export_are_refused_then_made_again(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path, "mscfnet2")
    meta = models.read_checkpoint_meta(checkpoint)
    with pytest.raises(models.CheckpointError, match="msir-export"):
        OnnxModel(meta, checkpoint)
    onnx_path = export_onnx(checkpoint)
    with onnx_path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(models.CheckpointError, match="sha256"):
        OnnxModel(meta, checkpoint)
    Embedder(checkpoint, "cpu", runtime="onnx")
    OnnxModel(meta, checkpoint)  # exported again: the graph matches its record


def test_runtime_onnx_that_cannot_export_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = make_checkpoint(tmp_path, "mscfnet2")
    monkeypatch.setattr("models.onnx._writable", lambda folder: False)
    with pytest.raises(CollectionError, match="runtime onnx: no writable folder"):
        Embedder(checkpoint, "cpu", runtime="onnx")


def test_onnx_model_reads_the_checkpoint_metadata(tmp_path: Path) -> None:
    checkpoint = make_checkpoint(tmp_path, "cnn5")
    export_onnx(checkpoint)
    model = OnnxModel(models.read_checkpoint_meta(checkpoint), checkpoint)
    embeddings, logits = model(np.zeros((3, 3, 32, 32), np.uint8))
    assert embeddings.shape == (3, models.read_checkpoint_meta(checkpoint).embedding_dim)
    assert logits.shape == (3, 10)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_msir_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from models.export_cli import main

    checkpoint = make_checkpoint(tmp_path, "mscfnet2")
    main([str(checkpoint), "--format", "onnx"])
    printed = capsys.readouterr().out.split()
    assert printed == [str(p) for p in onnx_paths(checkpoint)]
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.safetensors"), "--format", "onnx"])
    assert exit_info.value.code == 2
