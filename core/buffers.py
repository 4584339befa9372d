"""Reusable memory for the large per-field and per-batch buffers.

Memory new to a process is slow to touch on the VMs we run on (~2 s per GiB, paid again whenever
freed memory goes back to the host), while reusing memory the process already holds costs a memset.
A Vectra field is 90 MiB, read and transposed once per field, and a slide's stacking accumulator is
0.7 GiB per batch of fields, so both are reused:

* :func:`scratch` — one uninitialised buffer per thread and name, valid until the same thread asks
  for the same name again;
* :func:`recycled_zeros` — zeroed arrays handed out again once nothing references them any more.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

_local = threading.local()
_recycled: list[np.ndarray] = []
_recycled_lock = threading.Lock()


def scratch(name: str, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype``, reused by this thread for ``name``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    pool = _local.__dict__.setdefault("pool", {})
    buffer = pool.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = pool[name] = np.empty(nbytes, dtype=np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def recycled_zeros(shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
    """A zeroed array of ``shape`` and ``dtype``, in the memory of an earlier one if one is free.

    An array handed out here is free again once nothing but this module references it: no variable,
    object or view (a view references its base array). Free arrays of other shapes are released when
    a new array has to be made, so the memory held is that of the arrays in use at the busiest moment.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    with _recycled_lock:
        # referenced only by the list and getrefcount's own argument: nobody uses it (CPython)
        free = [i for i in range(len(_recycled)) if sys.getrefcount(_recycled[i]) == 2]
        for i in free:
            if _recycled[i].shape == shape and _recycled[i].dtype == dtype:
                array = _recycled[i]
                array.fill(0)
                return array
        for i in reversed(free):
            del _recycled[i]
        array = np.zeros(shape, dtype)
        _recycled.append(array)
        return array
