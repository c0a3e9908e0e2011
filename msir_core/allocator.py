"""glibc malloc settings for a process that runs many small forward passes (the service).

A CPU forward pass allocates activation buffers of a few hundred KB to a few MB and frees them at its end. glibc
serves blocks above its mmap threshold with fresh ``mmap`` pages and gives freed heap tops back to the kernel above
its trim threshold, so every pass pays page faults and zeroing again: measured on this project's 2-core EPYC VM with
the demo model, one image took 10.5-11 ms per pass instead of 4.8 ms (in any thread). Raising both thresholds keeps
those buffers in the process; the cost is that memory freed after a peak stays with the process (RSS) until exit.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX); mallopt refuses more.
MAX_MMAP_THRESHOLD_MB = 32


def keep_freed_buffers(mmap_threshold_mb: int) -> bool:
    """Serve blocks up to ``mmap_threshold_mb`` MiB from the heap and keep freed heap memory (glibc only).

    Returns whether the settings took effect (False off Linux/glibc, or with 0, which leaves glibc's defaults)."""
    if mmap_threshold_mb <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    threshold = min(mmap_threshold_mb, MAX_MMAP_THRESHOLD_MB) * 1024 * 1024
    ok = mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, 8 * threshold) == 1
    logger.debug("malloc: mmap threshold %d MiB, trim threshold %d MiB: %s", threshold >> 20, 8 * threshold >> 20, ok)
    return ok
