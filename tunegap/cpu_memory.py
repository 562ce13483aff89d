"""Freed CPU memory stays in the training process, so large batches do not fault pages in.

glibc hands every block above its mmap threshold (32 MiB at most, usually far less) back to
the kernel when it is freed, and trims the top of its heap after frees. A training step at a
large batch frees its activations and allocates them again the next step, so every step
maps fresh memory and takes a page fault on each 4 KiB of it. On the MNIST-1D CNN at batch
2048 that is ~35,000 faults an epoch, and an epoch takes 1.8x as long as with the memory
kept (benchmarks/cpu_memory.py; the figures are in benchmarks/README.md).

`keep_freed_memory` tells glibc to serve every block from its heap and never trim it, so
freed memory is reused in place. The process then holds on to its peak memory, which the
next step (or the next trial of a reused Ray actor) needs again anyway. Set
TUNEGAP_SYSTEM_MALLOC=1 to leave the C library as it is. Where the C library is not glibc
(no `mallopt`), nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["OPT_OUT_VARIABLE", "keep_freed_memory", "keeps_freed_memory"]

OPT_OUT_VARIABLE = "TUNEGAP_SYSTEM_MALLOC"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Largest value mallopt takes (an int): trim only a free heap top above 2 GiB.
_NEVER_TRIM = 2**31 - 1

_kept = False


def keeps_freed_memory() -> bool:
    """Whether `keep_freed_memory` has taken effect in this process."""
    return _kept


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (once per process); True where it took effect.

    Affects only allocations made after the call; safe to call more than once.
    """
    global _kept
    if _kept:
        return True
    if os.environ.get(OPT_OUT_VARIABLE, "").strip() not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # Order matters: with no mmap'd blocks allowed, big blocks come from the heap, whose top
    # is then never trimmed.
    _kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    return _kept
