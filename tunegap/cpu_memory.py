"""Freed CPU memory is reused by the training process, so large batches stop faulting.

glibc hands every block above its mmap threshold (128 KiB, rising with use) back to the
kernel when it is freed, and trims the top of its heap after frees. A training step at a
large batch frees its activations and allocates them again the next step, so every step
maps fresh memory and takes a page fault on each 4 KiB of it. Three ways to run, chosen
with TUNEGAP_CPU_MALLOC (figures from benchmarks/cpu_memory.py on glibc 2.36, in
benchmarks/README.md):

- "cached" (the default): blocks up to 32 MiB (the ceiling of glibc's own sliding
  threshold) come from the heap, which is no longer trimmed, so they are reused in place.
  This covers MNIST-1D's activations at every batch size (1.1x to 1.5x faster epochs at
  batch 1024 to 8000, page faults gone, the same peak memory).
- "heap": every block comes from the heap, also the larger ones. Much faster at large batches
  of image networks (a 1.4x to 1.9x faster step for a small conv net at batch 4096), but
  there it also took about twice the peak memory: torch allocates aligned blocks, which
  glibc does not fit into a freed block of the same size, so the heap grows before it is
  reused. Choose it where memory is plentiful.
- "system": glibc as it is.

This holds for the thread that trains (Ray runs a trial's steps on its actor's main thread):
glibc serves other threads from arenas that still map blocks above 64 MiB. The memory a
finished trial freed is handed back (`release_freed_memory`) before a reused Ray actor
starts the next one, so a small trial does not sit on a large one's heap. Where the C
library is not glibc (no `mallopt`), nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = [
    "MODES",
    "MODE_VARIABLE",
    "applied_mode",
    "cpu_malloc_mode",
    "release_freed_memory",
    "reuse_freed_memory",
]

MODE_VARIABLE = "TUNEGAP_CPU_MALLOC"
MODES = ("cached", "heap", "system")

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc's own ceiling for its sliding mmap threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit).
_MAX_MMAP_THRESHOLD = 32 * 2**20
# M_TRIM_THRESHOLD -1: never trim (mallopt(3)).
_NEVER_TRIM = -1

_applied: str | None = None


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt  # noqa: B018 - glibc's; musl has none
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def applied_mode() -> str | None:
    """The mode `reuse_freed_memory` put in effect in this process; None before any call."""
    return _applied


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
    libc = None if mode == "system" else _libc()
    if libc is None:
        return _applied
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mode == "heap":
        mapped = mallopt(_M_MMAP_MAX, 0)
    else:
        mapped = mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    if mapped == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1:
        _applied = mode
    return _applied


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel now (where glibc keeps it for reuse):
    between trials, so the next one does not sit on the last one's peak."""
    if _applied in ("cached", "heap"):
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
