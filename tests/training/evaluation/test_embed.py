"""embed_arrays: batching, preprocessing and mode handling around a real registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import PreprocessSpec, build, normalize
from training.evaluation.embed import embed_arrays

SPEC = PreprocessSpec(image_size=(20, 20), channels=3, resize="stretch", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("cnn5", num_classes=4, image_size=20)


def test_matches_the_model_on_normalised_input_whatever_the_batch(model: torch.nn.Module) -> None:
    images = np.random.default_rng(0).integers(0, 256, (11, 3, 20, 20), dtype=np.uint8)
    model.train()
    emb, logits = embed_arrays(model, images, SPEC, batch_size=4, progress=False)
    assert model.training, "the caller's mode is restored"
    assert emb.shape == (11, model.embedding_dim) and logits.shape == (11, 4)
    assert emb.dtype == np.float32 and logits.dtype == np.float32
    model.eval()
    with torch.inference_mode():
        expected = model(normalize(torch.from_numpy(images), SPEC))
    np.testing.assert_allclose(emb, expected.embedding.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, expected.logits.numpy(), rtol=1e-5, atol=1e-5)
    whole, _ = embed_arrays(model, images, SPEC, batch_size=64, progress=True)
    np.testing.assert_allclose(whole, emb, rtol=1e-5, atol=1e-5)


def test_memmap_input_and_empty_input(model: torch.nn.Module, tmp_path) -> None:
    path = tmp_path / "images.npy"
    np.save(path, np.full((3, 3, 20, 20), 128, dtype=np.uint8))
    emb, _ = embed_arrays(model, np.load(path, mmap_mode="r"), SPEC, batch_size=2, progress=False)
    assert emb.shape == (3, model.embedding_dim)
    np.testing.assert_allclose(emb[0], emb[2], rtol=1e-5, atol=1e-6)  # same image, other batch
    empty, empty_logits = embed_arrays(model, np.zeros((0, 3, 20, 20), np.uint8), SPEC, progress=False)
    assert empty.shape == (0, model.embedding_dim) and empty_logits.shape == (0, 4)


def test_wrong_inputs_are_named(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="uint8"):
        embed_arrays(model, np.zeros((2, 3, 20, 20), np.float32), SPEC)
    with pytest.raises(ValueError, match="expects"):
        embed_arrays(model, np.zeros((2, 1, 20, 20), np.uint8), SPEC)
    with pytest.raises(ValueError, match="batch_size"):
        embed_arrays(model, np.zeros((2, 3, 20, 20), np.uint8), SPEC, batch_size=0)
