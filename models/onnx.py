"""ONNX export of a checkpoint, and the ONNX Runtime model that serves it under the same contract.

``export_onnx(checkpoint)`` writes ``NAME.onnx`` and ``NAME.onnx.json`` beside ``NAME.safetensors``:

* the graph takes ``pixels``: ``uint8 [batch, C, H, W]``, exactly what :func:`models.to_uint8` makes under the
  checkpoint's preprocessing spec (the batch dimension is dynamic); normalisation (mean/std) is inside the graph;
* it returns ``embedding`` (``float32 [batch, D]``, L2-normalised, as the indexer stores them) and ``logits``
  (``float32 [batch, num_classes]``);
* the JSON is the checkpoint's own metadata (architecture, class names, preprocessing spec, ``weights_sha256`` of
  the weights it was exported from) plus an ``onnx`` section naming the graph file, its sha256, the opset and the
  input/output names. :class:`OnnxModel` refuses a graph whose file or source weights do not match.

onnx and onnxruntime are imported only here, and only when used: the rest of msir runs without them.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.checkpoint import CheckpointError, CheckpointMeta, checkpoint_paths, load_checkpoint, sha256_file
from models.preprocessing import PreprocessSpec
from msir_core.atomic import atomic_write_text

logger = logging.getLogger(__name__)

OPSET = 18
INPUT = "pixels"
OUTPUTS = ("embedding", "logits")


class OnnxExportError(CheckpointError):
    """A model that cannot be exported, or an export that does not reproduce the checkpoint."""


class _Exported(nn.Module):
    """uint8 pixels -> (L2-normalised embedding, logits): the whole model contract in one graph."""

    def __init__(self, model: nn.Module, spec: PreprocessSpec) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.float() - self.mean) * self.inv_std
        out = self.model(x)
        return F.normalize(out.embedding.float(), dim=1), out.logits.float()


def onnx_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """``NAME.safetensors`` (or ``NAME``, ``NAME.json``, ``NAME.onnx``) -> (``NAME.onnx``, ``NAME.onnx.json``)."""
    p = Path(checkpoint)
    if p.name.endswith(".onnx.json"):
        p = p.with_name(p.name[: -len(".onnx.json")])
    elif p.suffix == ".onnx":
        p = p.with_suffix("")
    weights, _ = checkpoint_paths(p)
    stem = weights.with_suffix("")
    return stem.with_name(stem.name + ".onnx"), stem.with_name(stem.name + ".onnx.json")


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, *, check_batch: int = 2) -> Path:
    """Export a checkpoint to ONNX (dynamic batch); returns the ``.onnx`` path. The result is checked against the
    PyTorch model on random pixels before it is kept (:class:`OnnxExportError` when it differs by over 1e-4)."""
    import onnx

    loaded = load_checkpoint(checkpoint, device="cpu")
    meta = loaded.meta
    onnx_path, json_path = onnx_paths(out if out is not None else loaded.path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Exported(loaded.model, meta.preprocess).eval()
    spec = meta.preprocess
    example = torch.randint(0, 256, (check_batch, spec.channels, *spec.image_size), dtype=torch.uint8)
    # A per-process temp name: two server workers exporting the same checkpoint at once must not share one file.
    tmp = onnx_path.with_name(f".{onnx_path.name}.{os.getpid()}.tmp")
    # The exporter's passes log each rewrite at info level: hundreds of lines in a server's start-up log.
    for name in ("onnx_ir", "onnxscript"):
        if logging.getLogger(name).getEffectiveLevel() < logging.WARNING:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            # The dynamo exporter (torch.export + onnxscript): the TorchScript one cannot trace MSCFNet's fused
            # multi-scale kernels. Its deprecation chatter is not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_shapes={INPUT: {0: torch.export.Dim("batch", min=1, max=4096)}},
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        onnx.checker.check_model(str(tmp))
        difference = _max_difference(wrapper, _session(tmp, threads=1), example)
        if difference > 1e-4:
            raise OnnxExportError(
                f"{meta.model_name}: the ONNX graph differs from the PyTorch model by {difference:.2e} (> 1e-4)"
            )
        tmp.replace(onnx_path)
    except (RuntimeError, torch.onnx.errors.OnnxExporterError, onnx.checker.ValidationError) as exc:
        raise OnnxExportError(f"{meta.model_name}: cannot be exported to ONNX: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    record = meta.model_dump(mode="json")
    record["onnx"] = {
        "file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "opset": OPSET,
        "source_weights": meta.weights_file,
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", spec.channels, *spec.image_size]},
        "outputs": {
            "embedding": {"dtype": "float32", "shape": ["batch", meta.embedding_dim], "l2_normalised": True},
            "logits": {"dtype": "float32", "shape": ["batch", len(meta.class_names)]},
        },
        "note": "pixels = models.to_uint8(image, preprocess) stacked on a batch axis; mean/std are in the graph",
    }
    atomic_write_text(json_path, json.dumps(record, indent=2) + "\n")
    logger.info("exported %s -> %s", loaded.path.name, onnx_path)
    return onnx_path


def _max_difference(wrapper: nn.Module, session: Any, example: torch.Tensor) -> float:
    with torch.inference_mode():
        expected = [t.numpy() for t in wrapper(example)]
    got = session.run(list(OUTPUTS), {INPUT: example.numpy()})
    return max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def runtime_available() -> str | None:
    """None when ONNX Runtime (and the exporter's packages) can be imported, else the reason they cannot."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"ONNX Runtime is not installed ({exc})"
    return None


def _agrees_with_torch(onnx_path: Path, model: nn.Module, spec: PreprocessSpec, *, inputs: int = 3) -> float:
    """Largest difference between the export and the PyTorch model over a few random inputs (batches of 1 and 2,
    as served)."""
    wrapper = _Exported(model, spec).eval()
    generator = torch.Generator().manual_seed(0)
    session = _session(onnx_path, threads=1)
    worst = 0.0
    for batch in [1] * (inputs - 1) + [2]:
        shape = (batch, spec.channels, *spec.image_size)
        example = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        worst = max(worst, _max_difference(wrapper, session, example))
    return worst


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def ensure_export(checkpoint: str | Path, fallback_dirs: Sequence[Path] = ()) -> Path:
    """A verified ONNX export of ``checkpoint``: the cached one when it was made from these very weights (sha256 in
    its metadata), its graph is unchanged and its outputs agree with PyTorch on a few inputs (<= 1e-4); otherwise a
    new export, written beside the checkpoint when that folder is writable, else in the first writable
    ``fallback_dirs`` (a collection folder). Returns the ``.onnx`` path; :class:`OnnxExportError` (a
    :class:`CheckpointError`) when no export can be made or verified."""
    reason = runtime_available()
    if reason is not None:
        raise OnnxExportError(reason)
    loaded = load_checkpoint(checkpoint, device="cpu")  # verifies the weights against their recorded sha256
    meta = loaded.meta
    beside = onnx_paths(loaded.path)[0]
    candidates = [beside] + [onnx_paths(Path(d) / loaded.path.name)[0] for d in fallback_dirs]
    for onnx_path in candidates:
        if not onnx_path.is_file():
            continue
        try:
            _verify_record(meta, loaded.path, onnx_path, onnx_paths(onnx_path)[1])
            difference = _agrees_with_torch(onnx_path, loaded.model, meta.preprocess)
        except CheckpointError as exc:
            logger.info("cached ONNX export %s is stale (%s); exporting again", onnx_path, exc)
            continue
        if difference <= 1e-4:
            logger.info("ONNX export %s verified (sha256 and outputs, max difference %.1e)", onnx_path, difference)
            return onnx_path
        logger.info("cached ONNX export %s differs from PyTorch by %.2e; exporting again", onnx_path, difference)
    for onnx_path in candidates:
        if _writable(onnx_path.parent):
            logger.info("exporting %s to ONNX (once; cached as %s)", loaded.path.name, onnx_path)
            return export_onnx(loaded.path, out=onnx_path.with_name(loaded.path.name))
    folders = ", ".join(str(c.parent) for c in candidates)
    raise OnnxExportError(f"no writable folder for the ONNX export of {loaded.path.name} (tried {folders})")


def _verify_record(meta: CheckpointMeta, checkpoint: str | Path, onnx_path: Path, json_path: Path) -> None:
    """Refuse an export that is missing, made from other weights than ``meta``'s, or whose graph changed since."""
    if not json_path.is_file() or not onnx_path.is_file():
        raise CheckpointError(
            f"{onnx_path}: no ONNX export of this checkpoint (runtime onnx needs NAME.onnx + NAME.onnx.json "
            f"beside NAME.safetensors); create it with: msir-export {checkpoint} --format onnx"
        )
    try:
        record = json.loads(json_path.read_text())
        graph = record["onnx"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{json_path}: not an msir ONNX export ({exc})") from exc
    if record.get("weights_sha256") != meta.weights_sha256:
        raise CheckpointError(
            f"{onnx_path}: exported from other weights (sha256 {str(record.get('weights_sha256'))[:12]}…) than "
            f"the checkpoint {meta.weights_file} ({meta.weights_sha256[:12]}…); export it again"
        )
    actual = sha256_file(onnx_path)
    if actual != graph.get("sha256"):
        raise CheckpointError(
            f"{onnx_path}: sha256 {actual[:12]}… does not match {str(graph.get('sha256'))[:12]}… recorded in "
            f"{json_path.name}; the graph was changed"
        )


class OnnxModel:
    """An exported checkpoint under ONNX Runtime: ``model(uint8 [B, C, H, W]) -> (embeddings, logits)``."""

    def __init__(
        self, meta: CheckpointMeta, checkpoint: str | Path, *, threads: int = 1, path: Path | None = None
    ) -> None:
        # ``path``: an export kept elsewhere than beside the checkpoint (a collection's cache, see ensure_export).
        onnx_path, json_path = onnx_paths(path if path is not None else checkpoint)
        _verify_record(meta, checkpoint, onnx_path, json_path)
        self.path = onnx_path
        self.meta = meta
        self._session = _session(onnx_path, threads)

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embeddings, logits = self._session.run(list(OUTPUTS), {INPUT: np.ascontiguousarray(pixels, dtype=np.uint8)})
        return np.asarray(embeddings, dtype=np.float32), np.asarray(logits, dtype=np.float32)
