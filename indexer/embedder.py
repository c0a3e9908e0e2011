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
RUNTIMES = ("auto", "torch", "onnx")


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

    def __init__(
        self,
        checkpoint: str | Path,
        device: str = "auto",
        runtime: str = "torch",
        onnx_cache_dir: Path | None = None,
    ) -> None:
        """``runtime``: ``onnx`` (ONNX Runtime on the CPU; the export is made and verified when missing or stale, see
        :func:`models.onnx.ensure_export`, and a failure is an error), ``torch`` (eager PyTorch), or ``auto``: onnx
        wherever it can run (a CPU device, onnxruntime installed, an export that verifies), else torch with one
        logged reason. ``onnx_cache_dir``: where the export is cached when the checkpoint's folder is read-only."""
        if runtime not in RUNTIMES:
            raise CollectionError(f"unknown runtime {runtime!r}; expected one of {list(RUNTIMES)}")
        # One forward pass at a time per model: concurrent requests queue here instead of thrashing the device.
        self._lock = threading.Lock()
        self._onnx: OnnxModel | None = None
        onnx_path: Path | None = None
        fallback = [onnx_cache_dir] if onnx_cache_dir is not None else []
        if runtime == "onnx":
            if str(device).lower().startswith("cuda"):
                raise CollectionError("runtime onnx runs on the CPU; use --device cpu (MSIR_DEVICE=cpu) or auto")
            onnx_path = self._export(checkpoint, fallback)
        elif runtime == "auto":
            onnx_path = self._try_export(checkpoint, device, fallback)
            runtime = "onnx" if onnx_path is not None else "torch"
        self.runtime = runtime
        if onnx_path is not None:
            from models.onnx import OnnxModel

            self.device = torch.device("cpu")
            self.meta = read_checkpoint_meta(checkpoint)
            _, json_path = checkpoint_paths(checkpoint)
            self.checkpoint_path = json_path.with_name(self.meta.weights_file)
            try:
                # Same threads as a torch forward pass would get (MSIR_TORCH_THREADS in the service).
                self._onnx = OnnxModel(self.meta, self.checkpoint_path, threads=torch.get_num_threads(), path=onnx_path)
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
            self.runtime,
        )

    @staticmethod
    def _export(checkpoint: str | Path, fallback: list[Path]) -> Path:
        from models.onnx import ensure_export

        try:
            return ensure_export(checkpoint, fallback)
        except CheckpointError as exc:
            raise CollectionError(f"runtime onnx: {exc}") from exc

    @staticmethod
    def _try_export(checkpoint: str | Path, device: str, fallback: list[Path]) -> Path | None:
        """The verified export for runtime auto, or None after logging the one reason torch runs instead."""
        if resolve_device(device).type != "cpu":
            # A GPU runs eager PyTorch (bf16, channels-last) faster than ONNX Runtime on the CPU would.
            logger.info("runtime auto: torch (the model runs on %s; ONNX Runtime here is CPU only)", device)
            return None
        from models.onnx import ensure_export

        try:
            return ensure_export(checkpoint, fallback)
        except CheckpointError as exc:  # OnnxExportError included: not installed, not exportable, no writable folder
            logger.warning("runtime auto: torch, because the ONNX export cannot be used: %s", exc)
            return None

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
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        # Everything under inference_mode (normalisation and the output's normalisation too, not only the forward
        # pass): outside it each op records version counters and autograd metadata, a per-request cost a plain
        # inference script does not pay.
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if cuda:
                x = x.pin_memory().to(self.device, non_blocking=True)
            x = normalize(x, self.spec)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._lock, autocast:
                out = self.model(x)
            embeddings = F.normalize(out.embedding.float(), dim=1)
            return EmbedResult(
                embeddings=embeddings.cpu().numpy().astype(np.float32, copy=False),
                logits=out.logits.float().cpu().numpy().astype(np.float32, copy=False),
            )

    def _empty(self) -> EmbedResult:
        return EmbedResult(np.zeros((0, self.dim), np.float32), np.zeros((0, len(self.meta.class_names)), np.float32))
