"""The table of model builders and the ``@register`` decorator each model family module fills it with.

:mod:`models.registry` builds models from this table; it sits above the family modules, which sit above this one,
so registering never needs an import cycle.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

Builder = Callable[..., nn.Module]
BUILDERS: dict[str, Builder] = {}
# Arguments every builder receives; anything else is a model-specific option.
COMMON_ARGS = ("num_classes", "in_channels", "image_size")


class UnknownModelError(KeyError, ValueError):
    """Raised for a model name that is not registered."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``fn(num_classes, in_channels, image_size, **options) -> nn.Module`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in BUILDERS:
            raise ValueError(f"model name {name!r} registered twice")
        params = inspect.signature(fn).parameters
        missing = [p for p in COMMON_ARGS if p not in params]
        if missing:
            raise TypeError(f"builder for {name!r} must accept {missing}")
        BUILDERS[name] = fn
        return fn

    return deco
