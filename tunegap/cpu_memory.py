"""Freed CPU memory is reused by the training process, so large batches stop faulting.

glibc hands every block above its mmap threshold (128 KiB, rising with use) back to the
kernel when it is freed, and trims the top of its heap after frees. A training step at a
large batch frees its activations and allocates them again the next step, so every step
maps fresh memory and takes a page fault on each 4 KiB of it. Three ways to run, chosen
with TUNEGAP_CPU_MALLOC (the figures are in benchmarks/README.md, from
benchmarks/cpu_memory.py):

- "cached" (the default): blocks up to 32 MiB (the most glibc allows) come from the heap,
  which is never trimmed, so they are reused in place. This covers MNIST-1D's activations at
  every batch size (1.1x to 1.4x faster epochs at batch 1024 to 8000, no page faults left)
  and costs no memory beyond what the process has freed and will need again.
- "heap": every block comes from the heap, also the larger ones. Much faster at large batches
  of image networks (a 1.9x faster step for a small conv net at batch 4096), but there it
  also took 1.9x the peak memory: glibc lets the heap grow, since an aligned block does not
  fit into the freed one of the same size. Choose it where memory is plentiful.
- "system": glibc as it is.

Where the C library is not glibc (no `mallopt`), nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MODES", "MODE_VARIABLE", "cpu_malloc_mode", "reuse_freed_memory"]

MODE_VARIABLE = "TUNEGAP_CPU_MALLOC"
MODES = ("cached", "heap", "system")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# Largest values mallopt takes: the mmap threshold's cap on 64-bit glibc, and an int.
_MAX_MMAP_THRESHOLD = 32 * 2**20
_NEVER_TRIM = 2**31 - 1

_applied: str | None = None


def cpu_malloc_mode() -> str:
    """The mode TUNEGAP_CPU_MALLOC asks for ("cached" when unset); ValueError if unknown."""
    mode = os.environ.get(MODE_VARIABLE, "").strip().lower() or "cached"
    if mode not in MODES:
        raise ValueError(
            f"{MODE_VARIABLE}={mode!r} is not allowed: use one of {', '.join(MODES)}"
        )
    return mode


def reuse_freed_memory() -> str:
    """Set glibc up as TUNEGAP_CPU_MALLOC asks (once per process); returns the mode in
    effect: "cached", "heap", or "system" where nothing was changed.

    Affects only allocations made after the call. The first call decides; later ones return
    what it did.
    """
    global _applied
    if _applied is not None:
        return _applied
    mode = cpu_malloc_mode()
    _applied = "system"
    if mode == "system" or not sys.platform.startswith("linux"):
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no C library to load, or one without mallopt
        return _applied
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mode == "heap":
        mapped = mallopt(_M_MMAP_MAX, 0)
    else:
        mapped = mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    if mapped == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1:
        _applied = mode
    return _applied
