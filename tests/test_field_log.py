"""Reading fields_used.csv's layer lists without Python's parser, which is not thread-safe on 3.11
(model builds read many slides' logs on Dask's worker threads at once)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shadeflow.core.io.cohort import _layer_list


def test_layer_lists_as_written_and_read_back():
    assert _layer_list("[1, 2, 5]") == (1, 2, 5)
    assert _layer_list("(3,)") == (3,)
    assert _layer_list("[]") == () and _layer_list("") == ()
    with pytest.raises(ValueError, match="not a list of layers"):
        _layer_list("1, 2")
    with pytest.raises(ValueError):
        _layer_list("[1, x]")


def test_many_threads_read_layer_lists_at_once():
    texts = [str(list(range(1, 1 + n % 40))) for n in range(4000)]
    with ThreadPoolExecutor(8) as pool:
        read = list(pool.map(_layer_list, texts))
    assert read == [tuple(range(1, 1 + n % 40)) for n in range(4000)]
