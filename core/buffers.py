"""Reusable per-thread scratch arrays for the large per-field buffers.

Fresh memory costs a page fault per 4 KiB on first touch (~2 s per GiB on a VM without transparent
huge pages); a Vectra field is 90 MiB, read and transposed once per field. Reusing one buffer per
thread removes that cost. A buffer is valid until the same thread asks for the same name again.
"""

from __future__ import annotations

import threading

import numpy as np

_local = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, reused by this thread for ``name``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    pool = _local.__dict__.setdefault("pool", {})
    buffer = pool.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = pool[name] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)
