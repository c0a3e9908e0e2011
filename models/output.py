"""The one output type every msir model returns."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class ModelOutput(NamedTuple):
    """What every model returns.

    ``embedding`` is the retrieval feature ``[B, D]``, *not* L2-normalised: callers normalise it, because the
    classifier head and some losses want the raw vector. ``logits`` are the classifier outputs ``[B, C]``.
    A NamedTuple (rather than a dataclass) so it passes through ``torch.compile`` and autocast untouched.
    """

    embedding: Tensor
    logits: Tensor
