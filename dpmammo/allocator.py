"""The C allocator's setting for training on a CPU (imports no torch: the CLI calls it first)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os


# mallopt parameters (man mallopt; glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS; False where
    the C library is not glibc (nothing changes there).

    By default glibc serves every allocation over 32 MB with a fresh mmap and unmaps it when it is
    freed, so each training step page-faults its large activations in again and the kernel
    zero-fills those pages: on a CPU that is a large part of a Swin-T step, more under DP
    (book-keeping clipping keeps more tensors alive); benchmarks/README.md has the figures. M_MMAP_MAX = 0 and
    M_TRIM_THRESHOLD = -1 serve large blocks from the heap and never shrink it; the price is that
    the process keeps its peak memory until it exits. DPMAMMO_KEEP_FREED_MEMORY=0 leaves glibc as it is.
    """
    if os.environ.get("DPMAMMO_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
