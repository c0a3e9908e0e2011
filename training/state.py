"""Resumable training state without pickle: ``training_state.safetensors`` + ``training_state.json``.

The safetensors file holds every tensor (model weights and buffers, optimizer state, RNG states) and, in its
metadata, the JSON of the scalars (step, epoch, schedule digest, optimizer hyper-parameters, accumulators,
history). It is written to a temporary file and renamed, so it is always whole and self-consistent; the
``.json`` beside it is the same JSON, for people and tools, and is not trusted on load.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from msir_core.atomic import atomic_write, atomic_write_text

STATE_NAME = "training_state"
STATE_FORMAT = "msir-training-state"
STATE_VERSION = 1


class ResumeError(ValueError):
    """A training state that cannot be resumed here; names the file and what differs."""


def state_paths(out_dir: Path) -> tuple[Path, Path]:
    return out_dir / f"{STATE_NAME}.safetensors", out_dir / f"{STATE_NAME}.json"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)


# -- RNG -----------------------------------------------------------------------------------------------------
def capture_rng(augment_generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    if augment_generator is not None:
        tensors["rng.augment"] = augment_generator.get_state()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    scalars = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "gauss_next": gauss_next},
    }
    return tensors, scalars


def restore_rng(
    tensors: dict[str, torch.Tensor], scalars: dict[str, Any], augment_generator: torch.Generator | None
) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    if augment_generator is not None and "rng.augment" in tensors:
        augment_generator.set_state(tensors["rng.augment"].to(torch.uint8))
    n = scalars["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = scalars["python"]
    random.setstate((p["version"], tuple(int(v) for v in tensors["rng.python"].tolist()), p["gauss_next"]))


def rank_rng(augment_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The RNG states that differ between the ranks of a distributed run (dropout, augmentation draws)."""
    tensors, _ = capture_rng(augment_generator)
    return {k: v for k, v in tensors.items() if k == "rng.torch" or k == "rng.augment" or k.startswith("rng.cuda.")}


# -- optimizer -----------------------------------------------------------------------------------------------
def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state -> (tensors named ``optim.<param>.<key>``, JSON-able scalars and param groups)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# -- save / load ---------------------------------------------------------------------------------------------
def save_state(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment_generator: torch.Generator | None,
    info: dict[str, Any],
    ranks_rng: list[dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the resumable state; ``info`` holds the JSON scalars (step, epoch, digests, accumulators...).

    ``ranks_rng`` (distributed runs, written by rank 0): every rank's :func:`rank_rng`, stored as
    ``rank<r>.rng.*`` so that each rank resumes its own random stream."""
    tensors = {f"model.{k}": v.detach() for k, v in _unwrap(model).state_dict().items()}
    opt_tensors, opt_meta = flatten_optimizer(optimizer)
    rng_tensors, rng_meta = capture_rng(augment_generator)
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    for r, states in enumerate(ranks_rng or []):
        tensors.update({f"rank{r}.{k}": v for k, v in states.items()})
    # safetensors refuses shared storage; a CPU clone per tensor keeps the file independent of the live model.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {
        "format": STATE_FORMAT,
        "format_version": STATE_VERSION,
        **info,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "torch": torch.__version__,
    }
    text = json.dumps(meta, indent=1, default=_json_default)
    weights, json_path = state_paths(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT, "state": text}))
    atomic_write_text(json_path, text + "\n")
    return weights


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_state(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """``(tensors, info)`` of the state in ``out_dir``, or None when there is none."""
    weights, _ = state_paths(out_dir)
    if not weights.is_file():
        return None
    try:
        with safe_open(str(weights), framework="pt") as fh:
            metadata = fh.metadata() or {}
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ResumeError(f"{weights}: unreadable training state ({exc}); delete it or use --no-resume") from exc
    if metadata.get("format") != STATE_FORMAT or "state" not in metadata:
        raise ResumeError(f"{weights}: not an msir training state (no {STATE_FORMAT!r} metadata)")
    info = json.loads(metadata["state"])
    if info.get("format_version", 0) > STATE_VERSION:
        raise ResumeError(f"{weights}: training state version {info.get('format_version')} is newer than this msir")
    return tensors, info


def restore_state(
    tensors: dict[str, torch.Tensor],
    info: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment_generator: torch.Generator | None,
    rank: int = 0,
) -> None:
    model_state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    _unwrap(model).load_state_dict(model_state, strict=True)
    optimizer.load_state_dict(unflatten_optimizer(tensors, info["optimizer"]))
    prefix = f"rank{rank}."
    own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if rank and not own:
        raise ResumeError(f"the training state holds no random state of rank {rank}; resume with the same world size")
    restore_rng({**tensors, **own}, info["rng"], augment_generator)


__all__ = ["ResumeError", "rank_rng", "read_state", "restore_state", "save_state", "state_paths"]
