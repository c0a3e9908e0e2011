"""msir_core.allocator: glibc's malloc thresholds, set by the service at start."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from msir_core.allocator import keep_freed_buffers


def test_zero_leaves_the_defaults() -> None:
    assert keep_freed_buffers(0) is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_buffers_are_reused_instead_of_mapped_again() -> None:
    """With the thresholds raised, freeing and allocating a 4 MiB block again costs no new page faults (glibc would
    otherwise map fresh zeroed pages for it every time). Run in a child: the setting is process-wide."""
    code = textwrap.dedent(
        """
        import ctypes, resource, sys
        from msir_core.allocator import keep_freed_buffers
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        def faults_of_reuse():
            size = 4 << 20
            p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)  # warm: the heap grows once
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(20):
                p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        default = faults_of_reuse()
        assert keep_freed_buffers(32)
        tuned = faults_of_reuse()
        print(default, tuned)
        sys.exit(0 if tuned * 10 < default else 1)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
