"""The C allocator's two thresholds, set for a training process (glibc only).

    tuned, note = tune_allocator()   # the CLI's train and quickstart, before training; ANMC_MALLOC=0 leaves it alone

A training step allocates and frees the same tensors of 0.1-20 MB over and over. glibc hands a freed
chunk above its mmap threshold (128 KiB at first, raised as such chunks are freed, at most 32 MiB)
and the free top of its heap above its trim threshold back to the system, and the next allocation
is faulted in again a page at a time: the README's quick start spent 154 of its 856 CPU-seconds in
the kernel, on 72 million page faults. With the thresholds at 32 MiB (mmap, the most glibc allows)
and 1 GiB (trim) freed memory is reused instead; a default training step took 0.73-0.80x the time
set here, 0.70-0.73x set through glibc's environment at start-up (docs/results.md §4, *The C allocator*). The price: up to 1 GiB of freed memory stays with the
process until it exits instead of going back to the system. A library does not change its caller's
allocator: only the CLI calls this; a notebook can call it too.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: allocations above it are mapped anyway
TRIM_THRESHOLD = 2**30


def tune_allocator() -> tuple[bool, str]:
    """Set glibc's mmap and trim thresholds (above); returns (whether they were set, a note for the log).
    Leaves the allocator alone with ANMC_MALLOC=0, when the process was started with glibc's own
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, and where the C library is not glibc."""
    if os.environ.get("ANMC_MALLOC", "").strip() == "0":
        return False, "allocator: left alone (ANMC_MALLOC=0)"
    if any(os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False, "allocator: the process's MALLOC_*_THRESHOLD_ settings kept"
    libc = _glibc()
    if libc is None:
        return False, "allocator: left alone (not glibc)"
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return False, "allocator: glibc refused the thresholds; left as it was"
    return True, "allocator: glibc keeps freed memory for reuse (mmap threshold 32 MiB, trim 1 GiB; ANMC_MALLOC=0 leaves it alone)"


def _glibc():
    """The process's C library when it is glibc (it alone has gnu_get_libc_version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc
