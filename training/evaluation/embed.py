"""Embeddings and logits of a model over a uint8 image array, batch by batch (evaluation and trainer)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from models import PreprocessSpec, normalize
from msir_core.progress import progress_bar

__all__ = ["embed_arrays"]

logger = logging.getLogger(__name__)


def embed_arrays(
    model: nn.Module,
    images_uint8: np.ndarray,
    spec: PreprocessSpec,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    *,
    progress: bool = True,
    description: str = "embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``images_uint8 [N, C, H, W]`` (array or memmap); returns float32 (embeddings [N, D],
    logits [N, C]).

    Each batch is copied to ``device`` as uint8 and normalised there with :func:`models.normalize`, the same
    preprocessing as the indexer and the service. The model runs in eval mode under ``torch.inference_mode``
    and is put back in the mode it was in. Embeddings come as the model gives them (not L2-normalised).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4:
        raise ValueError(
            f"images_uint8 must be uint8 [N, C, H, W], got {images_uint8.dtype} with shape {images_uint8.shape}"
        )
    expected = (spec.channels, *spec.image_size)
    if tuple(images_uint8.shape[1:]) != expected:
        raise ValueError(
            f"images are {tuple(images_uint8.shape[1:])} (C, H, W) but the preprocessing spec expects {expected}"
        )
    dev = torch.device(device)
    n = images_uint8.shape[0]
    # Sized from the declared attributes for an empty input, else from the first batch's real output.
    embeddings = np.zeros((0, int(getattr(model, "embedding_dim", 0))), dtype=np.float32)
    logits = np.zeros((0, int(getattr(model, "num_classes", 0))), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _progress(progress, description, n) as advance:
            for start in range(0, n, batch_size):
                # A writable copy: cache memmaps are read-only, and torch wants to own what it wraps.
                batch = np.array(images_uint8[start : start + batch_size], copy=True)
                x = normalize(torch.from_numpy(batch).to(dev, non_blocking=True), spec)
                out = model(x)
                emb, logit = out[0], out[1]  # ModelOutput(embedding, logits)
                if start == 0:
                    embeddings = np.zeros((n, emb.shape[1]), dtype=np.float32)
                    logits = np.zeros((n, logit.shape[1]), dtype=np.float32)
                embeddings[start : start + len(batch)] = emb.float().cpu().numpy()
                logits[start : start + len(batch)] = logit.float().cpu().numpy()
                advance(len(batch))
    finally:
        model.train(was_training)
    return embeddings, logits


@contextmanager
def _progress(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with rate and ETA, or nothing; yields ``advance(n)``."""
    if not enabled:
        yield lambda _n: None
        return
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
