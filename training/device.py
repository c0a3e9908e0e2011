"""The torch device a run asks for (``runtime.device``), checked before any work starts."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device={name!r} but CUDA is not available (torch {torch.__version__})")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return device


__all__ = ["resolve_device"]
