"""glibc malloc settings for a training process: freed tensors are reused, not unmapped.

A training step frees and allocates the same tensors every step (gradients, set to None
by `zero_grad`; activations; the loss's temporaries). glibc serves every allocation over
its mmap threshold (128 KiB at start, raised adaptively only up to the largest freed
chunk) with a fresh `mmap`, and trims the heap's free top back to the kernel past its
trim threshold, so each step pays page faults to get the same memory back: on the
digits MLP population (8 members, a 2 MiB weight gradient per layer) 150,000-270,000
minor faults and 1-2 s of a 16-second search (`benchmarks/vs_optuna.py`). PyTorch's CPU tuning
guide suggests jemalloc or tcmalloc for this; fixed glibc thresholds get most of it
without a preload. Tensors over `MMAP_THRESHOLD` (a dataset) are still mapped and given
back when freed; below it, freed memory stays in the process for reuse (up to
`TRIM_THRESHOLD` free at the top of each malloc arena's heap, plus whatever
fragmentation leaves in the middle, which glibc never returns either way).
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

#: mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: allocations at least this large are mapped and unmapped on their own (glibc's maximum
#: for the adaptive threshold on 64-bit systems)
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the heap's top kept for reuse rather than returned to the kernel
TRIM_THRESHOLD = 256 * 2**20

_applied: bool | None = None  # None: not tried yet


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; False where there is no glibc.

    Idempotent; call it before training starts (allocations already mapped keep their
    behaviour).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; fixed values also turn off glibc's adaptive ones
    mmap_set = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_set = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = mmap_set and trim_set
    return _applied
