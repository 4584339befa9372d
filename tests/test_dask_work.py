"""The deterministic tree reduction every job's per-field work goes through (tasks/dask_work.py)."""

from __future__ import annotations

import threading

import pytest
from distributed import Client, LocalCluster, wait

from shadeflow.tasks.dask_work import reduce_tree


class FieldBroken(ValueError):
    pass


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _leaf(i: int, broken: int | None = None) -> tuple[int, ...]:
    if i == broken:
        raise FieldBroken(f"field {i} is broken")
    return (i,)


def _concat(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return a + b


def test_merges_in_the_order_given_and_takes_the_leaves(client):
    futures = [client.submit(_leaf, i, pure=False) for i in range(11)]
    assert reduce_tree(client, futures, _concat) == tuple(range(11))
    assert futures == []  # the tree owns the leaves: nothing keeps finished partial results alive


@pytest.mark.parametrize("stop_running_work", [False, True], ids=["cancel-the-rest", "on-error-callback"])
def test_a_failed_leaf_raises_its_own_error(client, stop_running_work):
    """The field's exception, not a FutureCancelledError of a merge that depended on it."""
    stopped = threading.Event()
    futures = [client.submit(_leaf, i, 5, pure=False) for i in range(16)]
    with pytest.raises(FieldBroken, match="field 5 is broken"):
        reduce_tree(client, futures, _concat, on_error=stopped.set if stop_running_work else None)
    assert stopped.is_set() == stop_running_work


MERGE_MAY_FINISH = threading.Event()


def _slow_concat(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    MERGE_MAY_FINISH.wait(30)
    return a + b


def test_inputs_stay_wanted_until_their_merge_is_done(client):
    """A finished input is released only once the merge that consumes it is done, so no merge can
    depend on a key the client gave up (the "lost dependencies" race, dask/distributed#4612)."""
    import time

    MERGE_MAY_FINISH.clear()
    futures = [client.submit(_leaf, i, pure=False) for i in range(4)]
    keys = [f.key for f in futures]
    wait(futures)
    result = {}
    reducing = threading.Thread(
        target=lambda: result.update(value=reduce_tree(client, futures, _slow_concat))
    )
    reducing.start()
    time.sleep(2.5)  # more than two of reduce_tree's one-second looks at its pending merges
    scheduler = client.cluster.scheduler
    wanted = [bool(scheduler.tasks[k].who_wants) for k in keys]
    MERGE_MAY_FINISH.set()
    reducing.join(30)
    assert wanted == [True] * 4
    assert result["value"] == tuple(range(4))
