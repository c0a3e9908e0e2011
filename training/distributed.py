"""Multi-process training on PyTorch's own distributed runtime: ``torchrun`` sets the environment, we read it.

``torchrun --nproc-per-node N [--nnodes M --rdzv-endpoint HOST:PORT ...] $(which msir-train) ...`` starts one
process per GPU (or per CPU worker); each gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and a rendezvous. We
initialise the default process group with NCCL on CUDA and gloo on CPU, and wrap the model in
``DistributedDataParallel`` (the trainer). Without those variables everything here is a no-op for one process,
so a plain ``msir-train`` is unchanged.

Metric losses need the whole global batch, not a rank's slice: :func:`gather_with_grad` concatenates every
rank's embeddings in rank order, the local slice being the live (differentiable) tensor and the others constants.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# A long validation pass on rank 0 keeps the other ranks waiting at a barrier: give it room.
TIMEOUT = datetime.timedelta(minutes=60)
# torchrun's agent keeps one store for every restart of a job, and torch.distributed's env:// rendezvous adds no
# per-attempt prefix: a restarted round found the killed round's gloo addresses in it (rank 0 connected to the dead
# rank's port: "Connection refused" in every restart; or both ranks waited in Pair::waitUntilConnected for good),
# reproduced on 2026-11-29 with torch 2.13. Every round therefore joins under its own prefix (ATTEMPT_PREFIX). A
# watchdog still bounds the connect, whatever else stalls it: a rank not connected after
# MSIR_DIST_CONNECT_TIMEOUT_S exits with CONNECT_STALLED_EXIT, and torchrun --max-restarts starts a new round.
ATTEMPT_PREFIX = "msir/attempt_{}/"
CONNECT_TIMEOUT_ENV = "MSIR_DIST_CONNECT_TIMEOUT_S"
CONNECT_STALLED_EXIT = 75  # EX_TEMPFAIL: try again


def connect_timeout_s() -> float:
    return float(os.environ.get(CONNECT_TIMEOUT_ENV, "90"))


def _join_with_watchdog(limit_s: float, **kwargs: Any) -> None:
    connected = threading.Event()

    def expire() -> None:
        if not connected.is_set():
            # stderr directly: torchrun shows a failed rank's stderr, and os._exit skips logging's handlers.
            sys.stderr.write(
                f"rank {os.environ.get('RANK')}: the process group did not connect within {limit_s:.0f} s "
                f"({CONNECT_TIMEOUT_ENV}); exiting so that torchrun --max-restarts starts a new round\n"
            )
            sys.stderr.flush()
            os._exit(CONNECT_STALLED_EXIT)

    timer = threading.Timer(limit_s, expire)
    timer.daemon = True
    timer.start()
    try:
        _join(**kwargs)
    finally:
        connected.set()
        timer.cancel()


def _join(**kwargs: Any) -> None:
    """``init_process_group`` on the env:// rendezvous torchrun sets up, under this round's own store prefix."""
    store, rank, world_size = next(dist.rendezvous("env://", timeout=TIMEOUT))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(ATTEMPT_PREFIX.format(attempt), store)
    dist.init_process_group(store=prefixed, rank=rank, world_size=world_size, **kwargs)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node), and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed (one process, no process group)

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def current() -> DistInfo:
    """The running process group (or a one-process :class:`DistInfo` when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def setup(device: torch.device) -> tuple[DistInfo, torch.device, bool]:
    """Join the process group ``torchrun`` describes (if any). Returns ``(info, device, created)``: the device of
    this rank (``cuda:LOCAL_RANK`` on CUDA) and whether this call created the group (so the caller destroys it)."""
    if dist.is_available() and dist.is_initialized():
        info = current()
        return info, _rank_device(device, info.local_rank), False
    if not launched_by_torchrun():
        return DistInfo(), device, False
    if not dist.is_available():  # pragma: no cover - every official torch build has it
        raise RuntimeError("launched by torchrun but this torch build has no torch.distributed")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = _rank_device(device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"backend": backend, "timeout": TIMEOUT}
    if device.type == "cuda":
        kwargs["device_id"] = device  # binds NCCL to this GPU now instead of guessing at the first collective
        _join(**kwargs)
    else:
        _join_with_watchdog(connect_timeout_s(), **kwargs)
    info = current()
    logger.info("rank %s of %s (%s) on %s", info.rank, info.world_size, backend, device)
    return info, device, True


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    if device.type != "cuda":
        return device
    if device.index not in (None, local_rank):
        logger.warning("runtime.device %s ignored under torchrun: rank uses cuda:%s (LOCAL_RANK)", device, local_rank)
    return torch.device("cuda", local_rank)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: Tensor) -> Tensor:
    """Every rank's ``x`` (equal shapes) concatenated in rank order; the local slice keeps its autograd graph.

    The other slices arrive as constants: each rank differentiates only through its own samples, and the
    gradients DDP averages over ranks add up to the gradient of the loss on the whole global batch once each
    rank scales its metric loss by the world size (see :func:`scale_grad`).
    """
    n = world_size()
    if n == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def gather(x: Tensor) -> Tensor:
    """Every rank's ``x`` (equal shapes, no gradient) concatenated in rank order."""
    n = world_size()
    if n == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def scale_grad(loss: Tensor, factor: float) -> Tensor:
    """``loss`` with the same value and ``factor`` times its gradient.

    A loss computed by every rank on the gathered global batch, each rank back-propagating only into its own
    slice, gives rank ``r`` the gradient ``dL/dx_r``; DDP then divides the sum over ranks by the world size.
    Scaling by the world size undoes that division, so the update equals one process's on the whole batch.
    """
    if factor == 1:
        return loss
    return loss * factor - loss.detach() * (factor - 1)


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``sum`` or ``max``) when distributed; the tensor itself otherwise."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for one process)."""
    n = world_size()
    if n == 1:
        return [obj]
    out: list[Any] = [None] * n
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


__all__ = [
    "DistInfo",
    "all_reduce_",
    "barrier",
    "broadcast_object",
    "current",
    "gather",
    "gather_objects",
    "gather_with_grad",
    "launched_by_torchrun",
    "scale_grad",
    "setup",
    "teardown",
    "world_size",
]
