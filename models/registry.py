"""Model registry: ``build(name, ...)`` is the only way the rest of msir constructs a network."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

# Importing the family modules runs their @register decorators.
from models import cnn, mscfnet, resnet, vit  # noqa: F401
from models.builders import BUILDERS, COMMON_ARGS, Builder, UnknownModelError


def available() -> list[str]:
    """Sorted names accepted by :func:`build`."""
    return sorted(BUILDERS)


def options_of(name: str) -> dict[str, Any]:
    """The model-specific options of ``name`` with their defaults."""
    fn = _lookup(name)
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.name not in COMMON_ARGS and p.kind is p.KEYWORD_ONLY
    }


def normalize_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``32`` -> ``(32, 32)``; ``(h, w)`` kept. Raises on non-positive or malformed sizes."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return size  # type: ignore[return-value]


def build(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 32,
    **options: Any,
) -> nn.Module:
    """Build a registered model.

    The returned module has ``embedding_dim``, ``num_classes`` and ``build_config`` (enough to rebuild it, which is
    what checkpoints store). Unknown names and unknown options raise with the accepted values listed.
    """
    fn = _lookup(name)
    accepted = options_of(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {name!r}; accepted options: {sorted(accepted) or 'none'}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    size = normalize_image_size(image_size)
    model = fn(num_classes=num_classes, in_channels=in_channels, image_size=size, **options)
    for attr in ("embedding_dim", "num_classes"):
        if not hasattr(model, attr):
            raise TypeError(f"model {name!r} does not define {attr}")
    build_config: dict[str, Any] = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(size),
        "options": {**accepted, **options},
    }
    model.build_config = build_config  # type: ignore[assignment]
    return model


def _lookup(name: str) -> Builder:
    try:
        return BUILDERS[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; available models: {', '.join(sorted(BUILDERS))}") from None


__all__ = ["UnknownModelError", "available", "build", "normalize_image_size", "options_of"]
