"""Worker processes keep the memory they free (glibc malloc settings).

Masking one Vectra field allocates and frees dozens of arrays of 1–15 MiB (scipy's filters and FFTs
make their own). By default glibc gives such blocks back to the kernel as soon as they are freed
(Dask even asks for that, with ``MALLOC_TRIM_THRESHOLD_=65536`` for its worker processes), so the
next field page-faults the same memory in again: 10–15 % of the masking time on a 2-core VM
(``bench/meanimage.py``). A 32 MiB mmap threshold (glibc's largest dynamic one) and a 256 MiB trim
threshold keep those blocks in the process for reuse; what a worker holds on to is bounded by its
busiest moment, as before, plus at most the trim threshold.

In-process (threaded) workers get the settings by ``mallopt`` when their cluster starts; worker
processes get them as environment variables before they start, the only way glibc reads them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 256 * 2**20
#: the same settings for a process about to start (glibc reads them once, at start-up)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings to this process now; False if its C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 — present in glibc only: raises elsewhere
    except (OSError, AttributeError, TypeError):  # musl, macOS, Windows: nothing to tune
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def worker_process_environ(pre_spawn: dict[str, object]) -> dict[str, str]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` with these settings in place of Dask's trim
    threshold."""
    return {**{k: str(v) for k, v in pre_spawn.items()}, **MALLOC_ENV}
