"""Training batches from a decoded uint8 array, with the data placed where it is cheapest to read.

- CUDA, and the images fit in ``gpu_fraction`` of the free GPU memory: the whole uint8 array lives on the GPU
and
  a batch is one ``index_select`` there (no host work, no transfer).
- CUDA otherwise: the array stays on the host (pinned memory when it fits in RAM, else the memmap); each
batch is
  gathered into one of two pinned staging buffers and copied with ``non_blocking=True``, a CUDA event guarding
  each buffer against reuse while its copy is still in flight.
- CPU: a batch is an ``index_select`` of the in-RAM array (or a fancy index of the memmap).

The order of an epoch is ``torch.randperm`` from a CPU generator seeded by ``(seed, epoch)``: identical on CPU
and GPU, and reproducible on resume without saving any state.

Distributed (``world_size > 1``): ``batch_size`` is the global batch. Every rank computes the same epoch order
and reads only its slice of each global batch (rank ``r`` takes positions ``[r*b, (r+1)*b)`` of it, ``b`` the
per-rank batch), so the ranks together see exactly the batches one process would, in the same order.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import Tensor

from training.splits import take

logger = logging.getLogger(__name__)

RAM_FRACTION = 0.5  # copy a memmap into RAM when it needs less than this share of the available memory


def available_ram() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The permutation of epoch ``epoch`` (CPU int64), a pure function of ``(n, seed, epoch)``."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    return torch.randperm(n, generator=gen)


class BatchSource:
    """The ``rows`` of ``images``/``labels`` as training batches on ``device``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        device: torch.device,
        *,
        batch_size: int,
        gpu_fraction: float = 0.5,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(rows) == 0:
            raise ValueError("no training images")
        self.device = device
        self.n = len(rows)
        self.batch_size = min(batch_size, self.n)  # the global batch
        if self.batch_size % world_size:
            raise ValueError(
                f"optim.batch_size {self.batch_size} (the global batch) is not divisible by the world size "
                f"{world_size}: every rank must get the same per-rank batch"
            )
        self.rank, self.world_size = rank, world_size
        self.local_batch = self.batch_size // world_size
        self.steps_per_epoch = self.n // self.batch_size  # last partial batch dropped (constant batch shape)
        self.labels = torch.from_numpy(np.ascontiguousarray(labels[rows])).to(device)
        nbytes = len(rows) * int(np.prod(images.shape[1:]))
        self._staging: list[Tensor] = []
        self._events: list[torch.cuda.Event | None] = []
        self._slot = 0
        self.rows: Tensor | None = None  # maps batch positions to rows of self.images (memmap placement only)
        if device.type == "cuda" and nbytes <= gpu_fraction * torch.cuda.mem_get_info(device)[0]:
            self.placement = "gpu"
            self.images = self._to_gpu(images, rows)
        elif nbytes <= RAM_FRACTION * available_ram() or (
            isinstance(images, np.ndarray) and not isinstance(images, np.memmap)
        ):
            self.placement = "pinned" if device.type == "cuda" else "ram"
            host = torch.from_numpy(take(images, rows))
            self.images = host.pin_memory() if device.type == "cuda" else host
        else:
            self.placement = "memmap"
            self.images = images  # type: ignore[assignment]
            self.rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        if device.type == "cuda" and self.placement != "gpu":
            shape = (self.local_batch, *images.shape[1:])
            self._staging = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self._events = [None, None]
        logger.info(
            "training data: %s images (%.1f MB uint8) in %s memory; %s steps/epoch of %s%s",
            self.n,
            nbytes / 1e6,
            self.placement,
            self.steps_per_epoch,
            self.batch_size,
            f" ({self.local_batch} per rank x {world_size})" if world_size > 1 else "",
        )
        self._order: Tensor | None = None

    def _to_gpu(self, images: np.ndarray, rows: np.ndarray, chunk: int = 8192) -> Tensor:
        out = torch.empty((len(rows), *images.shape[1:]), dtype=torch.uint8, device=self.device)
        for start in range(0, len(rows), chunk):
            out[start : start + chunk].copy_(torch.from_numpy(take(images, rows[start : start + chunk])))
        return out

    def set_epoch(self, seed: int, epoch: int) -> None:
        order = epoch_order(self.n, seed, epoch)
        self._order = order.to(self.device) if self.placement == "gpu" else order

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        """Batch ``i`` of the current epoch: ``(uint8 [B, C, H, W], labels)`` on the device."""
        if self._order is None:
            raise RuntimeError("call set_epoch() before batch()")
        start = i * self.batch_size + self.rank * self.local_batch
        idx = self._order[start : start + self.local_batch]
        if self.placement == "gpu":
            return self.images.index_select(0, idx), self.labels[idx]
        labels = self.labels[idx.to(self.labels.device)]
        if self.device.type != "cuda":
            if self.placement == "memmap":
                assert self.rows is not None
                return torch.from_numpy(self.images[self.rows[idx].numpy()]), labels
            return self.images.index_select(0, idx), labels
        return self._copy_to_gpu(idx), labels

    def _copy_to_gpu(self, idx: Tensor) -> Tensor:
        slot = self._slot
        self._slot = 1 - slot
        event = self._events[slot]
        if event is not None:
            event.synchronize()  # the previous copy out of this buffer has finished
        buf = self._staging[slot][: len(idx)]
        if self.placement == "memmap":
            assert self.rows is not None
            np.take(self.images, self.rows[idx].numpy(), axis=0, out=buf.numpy())
        else:
            torch.index_select(self.images, 0, idx, out=buf)
        out = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[slot] = event
        return out


__all__ = ["BatchSource", "available_ram", "epoch_order"]
