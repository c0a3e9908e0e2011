"""Full ranking of similarity rows: descending score, equal scores in ascending column index.

On CPU each score is packed with its column into one int64 key (high 32 bits: the float's bits mapped to an
order-reversing integer; low 32 bits: the column) and the keys are sorted in place with NumPy on a few
threads. Keys are unique, so any sort gives the order of a stable descending sort; sorting plain int64 values
is several times faster than ``torch.sort`` with indices on CPU. Buffers live in a :class:`RankWorkspace`
reused from batch to batch, because touching fresh memory for every batch costs as much as the sort. Other
devices use ``torch.sort(stable=True)``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

__all__ = ["RankWorkspace", "rank_rows"]

_LOW_31 = np.int32(0x7FFFFFFF)
_LOW_32 = np.int64(0xFFFFFFFF)


class RankWorkspace:
    """Preallocated CPU buffers to rank up to ``rows`` rows of ``cols`` scores (9 bytes per score)."""

    def __init__(self, rows: int, cols: int) -> None:
        if cols >= 2**32:
            raise ValueError(f"cannot rank {cols} columns (at most 2**32 - 1)")
        self.keys = np.empty((rows, cols), dtype=np.int64)
        self.negative = np.empty((rows, cols), dtype=bool)
        self.columns = np.arange(cols, dtype=np.int64)[None, :]


def rank_rows(sims: Tensor, top: int, workspace: RankWorkspace | None = None) -> tuple[Tensor, Tensor]:
    """Column order of each row of ``sims [B, N]`` by descending score (ties: ascending column).

    Returns (order int64 ``[B, N]``, the ``top`` highest scores float32 ``[B, top]``). Scores must not be NaN.
    On CPU ``sims`` is scratch space (garbage afterwards) and ``order`` is a view of the workspace, valid
    until its next use.
    """
    if sims.device.type != "cpu":
        scores, order = torch.sort(sims, dim=1, descending=True, stable=True)
        return order, scores[:, :top].clone()
    rows, cols = sims.shape
    ws = workspace if workspace is not None else RankWorkspace(rows, cols)
    values = sims.contiguous().numpy()
    keys, negative = ws.keys[:rows], ws.negative[:rows]
    values += np.float32(0.0)  # -0.0 becomes +0.0: the two compare equal and must tie
    bits = values.view(np.int32)
    # IEEE floats order like sign-magnitude integers: flipping the magnitude bits of negative ones makes them
    # order like two's-complement integers, and ``~`` reverses the order (it cannot overflow, unlike -x).
    np.less(bits, 0, out=negative)
    np.bitwise_xor(bits, _LOW_31, out=bits, where=negative)
    np.invert(bits, out=bits)
    keys[...] = bits
    np.left_shift(keys, 32, out=keys)
    np.bitwise_or(keys, ws.columns, out=keys)
    _sort_rows_in_place(keys)
    top_scores = _decode_scores(keys[:, :top])
    np.bitwise_and(keys, _LOW_32, out=keys)
    return torch.from_numpy(keys), torch.from_numpy(top_scores)


def _decode_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores packed in the high half of ``keys`` (the inverse of the packing above)."""
    bits = np.invert((keys >> 32).astype(np.int32))
    np.bitwise_xor(bits, _LOW_31, out=bits, where=bits < 0)
    return bits.view(np.float32)


def _sort_rows_in_place(keys: np.ndarray) -> None:
    """Sort every row; NumPy releases the GIL while sorting, so blocks of rows sort in parallel threads."""
    workers = max(1, min(torch.get_num_threads(), keys.shape[0]))
    if workers == 1:
        keys.sort(axis=1)
        return
    bounds = np.linspace(0, keys.shape[0], workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda i: keys[bounds[i] : bounds[i + 1]].sort(axis=1), range(workers)))
