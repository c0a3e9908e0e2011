"""The one checkpoint format: ``NAME.safetensors`` (weights) + ``NAME.json`` (everything needed to rebuild).

No pickle anywhere: a checkpoint is data, never code. The JSON names the architecture (``build_config``), the
class names, the preprocessing spec and the sha256 of the weights file, so training, the indexer and the service
rebuild exactly the same model and refuse anything that does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from models.preprocessing import PreprocessSpec
from models.registry import build
from msir_core.atomic import atomic_write, atomic_write_text
from msir_core.versioned_json import read_versioned_json

FORMAT = "msir-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what differs."""


class CheckpointMeta(BaseModel):
    """The JSON half of a checkpoint."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    model: dict[str, Any]
    class_names: list[str]
    # Full names of the classes where the codes are terse (ISIC's "MEL" = "melanoma"); shown beside the codes.
    class_descriptions: dict[str, str] = {}
    multi_label: bool = False
    preprocess: PreprocessSpec
    embedding_dim: int
    num_parameters: int
    weights_file: str
    weights_sha256: str
    created_at: str
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    @property
    def model_name(self) -> str:
        return str(self.model["name"])


@dataclass
class LoadedCheckpoint:
    model: nn.Module
    meta: CheckpointMeta
    path: Path  # the .safetensors file


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``x``, ``x.json`` or ``x.safetensors`` -> (``x.safetensors``, ``x.json``)."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p}: pickle-based checkpoints ({p.suffix}) are refused because loading them can run arbitrary "
            f"code; msir checkpoints are NAME.safetensors + NAME.json"
        )
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    class_names: list[str],
    preprocess: PreprocessSpec,
    multi_label: bool = False,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    class_descriptions: dict[str, str] | None = None,
) -> Path:
    """Save ``model`` (built by :func:`models.build`) as ``path.safetensors`` + ``path.json``; returns the former."""
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    config = getattr(model, "build_config", None)
    if config is None:
        raise CheckpointError("model has no build_config: build it with models.build() so it can be rebuilt")
    if len(class_names) != config["num_classes"]:
        raise CheckpointError(
            f"{len(class_names)} class names given for a model with num_classes={config['num_classes']}"
        )
    if preprocess.channels != config["in_channels"]:
        raise CheckpointError(
            f"preprocess.channels={preprocess.channels} but the model takes in_channels={config['in_channels']}"
        )
    if list(preprocess.image_size) != list(config["image_size"]):
        raise CheckpointError(
            f"preprocess.image_size={list(preprocess.image_size)} but the model was built for "
            f"image_size={config['image_size']}"
        )
    weights_path, json_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": FORMAT}))
    meta = CheckpointMeta(
        model=config,
        class_names=list(class_names),
        class_descriptions={k: v for k, v in (class_descriptions or {}).items() if k in class_names},
        multi_label=multi_label,
        preprocess=preprocess,
        embedding_dim=int(model.embedding_dim),  # type: ignore[arg-type]
        num_parameters=sum(p.numel() for p in model.parameters()),
        weights_file=weights_path.name,
        weights_sha256=sha256_file(weights_path),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        training=training,
        metrics=metrics,
    )
    text = json.dumps(meta.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    atomic_write_text(json_path, text)
    return weights_path


def read_checkpoint_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate the JSON half (cheap: the weights are not read)."""
    _, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise CheckpointError(f"{json_path}: checkpoint metadata JSON not found (every .safetensors needs one)")
    raw = read_versioned_json(json_path, fmt=FORMAT, max_version=FORMAT_VERSION, error=CheckpointError,
                              what="an msir checkpoint", unreadable="not valid JSON")  # fmt: skip
    try:
        return CheckpointMeta.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(f"{json_path}: invalid checkpoint metadata: {exc}") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model of a checkpoint and load its weights (eval mode). No pickle is involved."""
    weights_path, json_path = checkpoint_paths(path)
    meta = read_checkpoint_meta(json_path)
    weights_path = json_path.with_name(meta.weights_file)
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file named by {json_path.name} not found")
    actual = sha256_file(weights_path)
    if actual != meta.weights_sha256:
        raise CheckpointError(
            f"{weights_path}: sha256 {actual[:12]}… does not match {meta.weights_sha256[:12]}… recorded in "
            f"{json_path.name}; the weights were changed or the files come from different checkpoints"
        )
    config = meta.model
    try:
        model = build(
            config["name"],
            num_classes=config["num_classes"],
            in_channels=config["in_channels"],
            image_size=tuple(config["image_size"]),
            **config.get("options", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{json_path}: cannot rebuild model from its config: {exc}") from exc
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({exc})") from exc
    _check_state(weights_path, model, state)
    model.load_state_dict(state, strict=True)
    return LoadedCheckpoint(model=model.to(device).eval(), meta=meta, path=weights_path)


def _check_state(weights_path: Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:5]}{' …' if len(wrong) > 5 else ''}")
        raise CheckpointError(
            f"{weights_path}: weights do not fit architecture {model.build_config['name']!r}: "  # type: ignore[index]
            + "; ".join(parts)
        )
