"""Checkpoint -> L2-normalised embeddings (and logits), on the best available device.

The preprocessing is the checkpoint's own :class:`models.PreprocessSpec`; decoding and ``to_uint8`` happen on the
caller's side (worker processes in a build), normalisation on the device. On CUDA the forward pass runs under
bf16 autocast with channels-last memory; the outputs are converted back to float32 before normalising.

``runtime="onnx"`` runs the checkpoint's ONNX export (``msir-export CHECKPOINT --format onnx``) under ONNX Runtime on
the CPU instead: the same checkpoint JSON (classes, preprocessing, weights sha256) and the same refusal of a
mismatched checkpoint, plus the export's own check that it was made from these very weights.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexer.errors import CollectionError
from indexer.records import EmbedResult

if TYPE_CHECKING:
    from models.onnx import OnnxModel
from models import (
    CheckpointError,
    PreprocessSpec,
    load_checkpoint,
    normalize,
    read_checkpoint_meta,
    to_uint8,
)
from models.checkpoint import checkpoint_paths

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
RUNTIMES = ("torch", "onnx")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error naming the setting."""
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CollectionError(f"device {device!r} requested but no CUDA GPU is available; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise CollectionError(f"unknown device {device!r}; expected one of {list(DEVICES)}")


class Embedder:
    """A loaded checkpoint that turns images into retrieval embeddings."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", runtime: str = "torch") -> None:
        if runtime not in RUNTIMES:
            raise CollectionError(f"unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")
        self.runtime = runtime
        # One forward pass at a time per model: concurrent requests queue here instead of thrashing the device.
        self._lock = threading.Lock()
        self._onnx: OnnxModel | None = None
        if runtime == "onnx":
            if str(device).lower().startswith("cuda"):
                raise CollectionError("runtime onnx runs on the CPU; use --device cpu (MSIR_DEVICE=cpu) or auto")
            from models.onnx import OnnxModel

            self.device = torch.device("cpu")
            self.meta = read_checkpoint_meta(checkpoint)
            _, json_path = checkpoint_paths(checkpoint)
            self.checkpoint_path = json_path.with_name(self.meta.weights_file)
            try:
                # Same threads as a torch forward pass would get (MSIR_TORCH_THREADS in the service).
                self._onnx = OnnxModel(self.meta, self.checkpoint_path, threads=torch.get_num_threads())
            except CheckpointError as exc:
                raise CollectionError(str(exc)) from exc
        else:
            self.device = resolve_device(device)
            loaded = load_checkpoint(checkpoint, device=self.device)
            self.checkpoint_path = loaded.path
            self.meta = loaded.meta
            self.model = loaded.model
            if self.device.type == "cuda":
                self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        logger.info(
            "embedder: %s (%s, dim %d) on %s, runtime %s",
            self.checkpoint_path.name,
            self.meta.model_name,
            self.dim,
            self.device,
            runtime,
        )

    @property
    def spec(self) -> PreprocessSpec:
        return self.meta.preprocess

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def multi_label(self) -> bool:
        return bool(self.meta.multi_label)

    @property
    def dim(self) -> int:
        return int(self.meta.embedding_dim)

    @property
    def checkpoint_sha256(self) -> str:
        return self.meta.weights_sha256

    def embed_images(self, images: list[Image.Image]) -> EmbedResult:
        """Decoded PIL images (any mode/size) -> embeddings, via the checkpoint's preprocessing."""
        if not images:
            return self._empty()
        return self.embed_uint8(np.stack([to_uint8(img, self.spec) for img in images]))

    def embed_uint8(self, batch: np.ndarray) -> EmbedResult:
        """``uint8 [B, C, H, W]`` (the output of ``to_uint8``) -> embeddings."""
        if batch.dtype != np.uint8 or batch.ndim != 4:
            raise ValueError(f"expected a uint8 array [B, C, H, W], got {batch.dtype} {batch.shape}")
        expected = (self.spec.channels, *self.spec.image_size)
        if tuple(batch.shape[1:]) != expected:
            raise ValueError(f"expected images of shape {expected} (C, H, W), got {tuple(batch.shape[1:])}")
        if len(batch) == 0:
            return self._empty()
        if self._onnx is not None:
            # No lock: an ONNX Runtime session runs concurrent calls safely, on the CPU (no device to thrash), so a
            # lone request's pass and a micro-batch may use two cores at once.
            embeddings_np, logits_np = self._onnx(batch)  # L2-normalised inside the graph
            return EmbedResult(embeddings=embeddings_np, logits=logits_np)
        cuda = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if cuda:
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = normalize(x, self.spec)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), autocast:
            out = self.model(x)
        embeddings = F.normalize(out.embedding.float(), dim=1)
        return EmbedResult(
            embeddings=embeddings.cpu().numpy().astype(np.float32, copy=False),
            logits=out.logits.float().cpu().numpy().astype(np.float32, copy=False),
        )

    def _empty(self) -> EmbedResult:
        return EmbedResult(np.zeros((0, self.dim), np.float32), np.zeros((0, len(self.meta.class_names)), np.float32))
