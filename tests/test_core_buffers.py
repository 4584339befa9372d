"""Reused memory: scratch buffers per thread, and zeroed arrays recycled once nothing references them."""

import threading

import numpy as np

from shadeflow.core import buffers


def test_recycled_array_is_reused_zeroed_once_free():
    first = buffers.recycled_zeros((3, 4), np.uint64)
    first += 7
    address = first.__array_interface__["data"][0]
    del first
    again = buffers.recycled_zeros((3, 4), np.uint64)
    assert again.__array_interface__["data"][0] == address  # the same memory...
    assert not again.any()  # ...zeroed


def test_recycled_array_is_not_handed_out_while_referenced():
    held = buffers.recycled_zeros((5, 6), np.uint32)
    held += 1
    view = held[2:]  # a view keeps its base array in use
    other_name = held
    del held
    second = buffers.recycled_zeros((5, 6), np.uint32)
    assert not np.shares_memory(second, view)
    assert (view == 1).all() and (other_name == 1).all()
    del other_name
    third = buffers.recycled_zeros((5, 6), np.uint32)
    assert not np.shares_memory(third, view) and not np.shares_memory(third, second)
    del view, third
    assert (
        np.shares_memory(buffers.recycled_zeros((5, 6), np.uint32), buffers.recycled_zeros((5, 6), np.uint32))
        is False
    )


def test_recycled_arrays_match_shape_and_dtype():
    a = buffers.recycled_zeros((2, 2), np.uint16)
    del a
    b = buffers.recycled_zeros((2, 2), np.uint32)
    c = buffers.recycled_zeros((4,), np.uint16)
    assert b.dtype == np.uint32 and b.shape == (2, 2)
    assert c.dtype == np.uint16 and c.shape == (4,)


def test_free_arrays_of_other_shapes_are_released_when_a_new_one_is_made():
    for n in range(10):
        buffers.recycled_zeros((n + 100,), np.uint8)  # dropped at once: free
    held = [array for array in buffers._recycled if array.shape[0] >= 100]
    assert len(held) <= 1  # only the newest of the free ones is still kept


def test_scratch_is_per_thread():
    seen = {}

    def take(name):
        seen[name] = buffers.scratch("test-scratch", (4,), np.float32)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not np.shares_memory(seen[0], seen[1])
    mine = buffers.scratch("test-scratch", (4,), np.float32)
    assert np.shares_memory(mine, buffers.scratch("test-scratch", (2,), np.float32))
