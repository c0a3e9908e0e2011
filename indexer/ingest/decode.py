"""The reader stage, run in worker processes: bytes -> sha256, decoded image -> ``to_uint8`` array and copy descriptor.

Module-level functions only (they are sent to a process pool). A dataset reader is installed once per process:
inherited from the parent under ``fork``, reopened from ``(kind, root)`` under ``spawn``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from indexer.ingest.sources import WorkItem
from models import PreprocessSpec, open_image, original_size, to_uint8
from models.copy_descriptor import copy_descriptor
from msir_data import DatasetReader, open_dataset

_READER: DatasetReader | None = None
PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_S = 0.5
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    position: int  # index of the item in its chunk
    sha256: str
    width: int
    height: int
    pixels: np.ndarray  # uint8 [C, H, W]
    copy: np.ndarray  # float32 [models.copy_descriptor.DIM]: what near-duplicate groups compare


@dataclass(frozen=True)
class Failed:
    position: int
    reason: str


def set_reader(reader: DatasetReader | None) -> None:
    global _READER
    _READER = reader


def die_with_parent(parent_pid: int) -> None:
    """Make this worker process die with ``parent_pid``, whatever kills the parent (``kill -9`` included).

    On Linux the kernel sends SIGKILL to the worker when its parent dies (``PR_SET_PDEATHSIG``); a watchdog thread
    checking the parent pid covers the rest (another OS, or the parent's forking thread ending first, which also
    fires the death signal on Linux but is not a parent exit)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d)", ctypes.get_errno())
        except (OSError, AttributeError) as error:  # no libc symbol: the watchdog still works
            logger.warning("prctl unavailable: %s", error)
    if os.getppid() != parent_pid:  # the parent died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="msir-parent-watchdog", daemon=True).start()


def init_worker(reader_args: tuple[str, str] | None, max_pixels: int | None, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    if _READER is None and reader_args is not None:
        kind, root = reader_args
        set_reader(open_dataset(kind, root, max_pixels=max_pixels))


def _pixels_sha256(img: Image.Image) -> str:
    # Array datasets (CIFAR pickles, IDX) have no file per image: the decoded pixels are the content.
    digest = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    digest.update(np.asarray(img).tobytes())
    return digest.hexdigest()


def decode_one(item: WorkItem, spec: PreprocessSpec, max_pixels: int | None) -> tuple[str, Image.Image]:
    if item.item is not None and _READER is not None:
        img = _READER.load(item.item)
        if item.path is None:
            return _pixels_sha256(img), img
        return hashlib.sha256(Path(item.path).read_bytes()).hexdigest(), img
    if item.path is None:
        raise ValueError(f"{item.uri}: no file to read")
    data = Path(item.read_path or item.path).read_bytes()
    # Large JPEGs are decoded at a reduced DCT scale, never below the model's input size (as the service does).
    image = open_image(data, max_pixels=max_pixels, name=item.uri, min_size=max(spec.image_size))
    return hashlib.sha256(data).hexdigest(), image


def decode_chunk(
    items: list[WorkItem], spec: PreprocessSpec, max_pixels: int | None
) -> tuple[list[Decoded | Failed], float]:
    """Decode a chunk; bad items become :class:`Failed` with the reason. Returns the results and CPU seconds."""
    start = time.perf_counter()
    out: list[Decoded | Failed] = []
    for position, item in enumerate(items):
        try:
            sha, img = decode_one(item, spec, max_pixels)
            width, height = original_size(img)  # the stored size, not a reduced decoding's
            out.append(Decoded(position, sha, width, height, to_uint8(img, spec), copy_descriptor(img)))
        except (OSError, ValueError) as error:  # ImageDecodeError and BadItemError are ValueErrors
            out.append(Failed(position, str(error) or type(error).__name__))
    return out, time.perf_counter() - start
