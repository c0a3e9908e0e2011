"""Safe checkpoints: round trip, and every refusal names the file and the difference."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import models
from models import CheckpointError, PreprocessSpec, load_checkpoint, read_checkpoint_meta, save_checkpoint

CLASSES = ["a", "b", "c"]


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("mscfnet2", num_classes=3, in_channels=3, image_size=16)


SPEC = PreprocessSpec.for_dataset("cifar10", 16)


def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    model = small_model()
    path = save_checkpoint(tmp_path / "ckpt", model, class_names=CLASSES, preprocess=SPEC, metrics={"accuracy": 0.5})
    return model, path


def test_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model, path = saved(tmp_path)
    assert path.name == "ckpt.safetensors" and (tmp_path / "ckpt.json").is_file()
    loaded = load_checkpoint(tmp_path / "ckpt.json")
    assert not loaded.model.training
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        a, b = model(x), loaded.model(x)
    assert torch.equal(a.embedding, b.embedding) and torch.equal(a.logits, b.logits)
    meta = loaded.meta
    assert meta.class_names == CLASSES and meta.preprocess == SPEC and meta.metrics == {"accuracy": 0.5}
    assert meta.embedding_dim == 128 and meta.model_name == "mscfnet2"
    assert meta.num_parameters == sum(p.numel() for p in model.parameters())
    # All three spellings of the path work.
    for p in (tmp_path / "ckpt", tmp_path / "ckpt.safetensors"):
        assert read_checkpoint_meta(p).weights_sha256 == meta.weights_sha256


def test_options_survive_the_round_trip(tmp_path: Path) -> None:
    model = models.build("mscfnet2", 3, image_size=16, batch_norm=True, width=8)
    save_checkpoint(tmp_path / "bn", model, class_names=CLASSES, preprocess=SPEC)
    loaded = load_checkpoint(tmp_path / "bn")
    assert loaded.meta.model["options"]["batch_norm"] is True
    assert sum(p.numel() for p in loaded.model.parameters()) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path: Path, suffix: str) -> None:
    evil = tmp_path / f"model{suffix}"
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path.touch, (marker,))

    evil.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match=r"pickle-based checkpoints \(\.p|pickle-based"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_missing_json_is_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    (tmp_path / "ckpt.json").unlink()
    with pytest.raises(CheckpointError, match=r"ckpt\.json: checkpoint metadata JSON not found"):
        load_checkpoint(path)


def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"ckpt\.safetensors: sha256 .* does not match"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    json_path = tmp_path / "ckpt.json"
    meta = json.loads(json_path.read_text())
    meta["model"]["num_classes"] = 5  # architecture now has a 5-way head, weights a 3-way one
    meta["class_names"] = list("abcde")
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"weights do not fit architecture 'mscfnet2'.*shape mismatches"):
        load_checkpoint(path)


def test_newer_format_and_foreign_json_are_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    json_path = tmp_path / "ckpt.json"
    meta = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer than this msir understands"):
        load_checkpoint(path)
    json_path.write_text(json.dumps({"hello": "world"}))
    with pytest.raises(CheckpointError, match="not an msir checkpoint"):
        load_checkpoint(path)
    json_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_unknown_model_in_json_is_refused(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    json_path = tmp_path / "ckpt.json"
    meta = json.loads(json_path.read_text())
    meta["model"]["name"] = "alexnet"
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"cannot rebuild model.*unknown model 'alexnet'"):
        load_checkpoint(path)


def test_save_refuses_inconsistent_metadata(tmp_path: Path) -> None:
    model = small_model()
    with pytest.raises(CheckpointError, match="2 class names"):
        save_checkpoint(tmp_path / "x", model, class_names=["a", "b"], preprocess=SPEC)
    with pytest.raises(CheckpointError, match="channels"):
        save_checkpoint(tmp_path / "x", model, class_names=CLASSES, preprocess=PreprocessSpec.for_dataset("mnist", 16))
    with pytest.raises(CheckpointError, match="image_size"):
        save_checkpoint(
            tmp_path / "x", model, class_names=CLASSES, preprocess=PreprocessSpec.for_dataset("cifar10", 32)
        )
    with pytest.raises(CheckpointError, match="build_config"):
        save_checkpoint(tmp_path / "x", torch.nn.Linear(2, 2), class_names=CLASSES, preprocess=SPEC)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_class_descriptions_are_kept_for_known_classes_only(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "named",
        small_model(),
        class_names=CLASSES,
        preprocess=SPEC,
        class_descriptions={"a": "alpha", "z": "not a class"},
    )
    assert read_checkpoint_meta(path).class_descriptions == {"a": "alpha"}
    _, plain = saved(tmp_path)
    assert read_checkpoint_meta(plain).class_descriptions == {}  # older checkpoints: none
