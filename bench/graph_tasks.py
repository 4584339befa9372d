"""Dask tasks per chunk of a tile correction, and the scheduler's task rate: inputs of the cost model.

    .venv/bin/python bench/graph_tasks.py [--rate]

Builds the graph ``correct`` computes for a tile (``core.correct.graph.stored_correction``: corrected
and written into zarr arrays, 4 output levels, z halved from level 2, chunks 64×256×256 uint16 =
8 MiB) for three tile shapes, lets Dask optimise it as ``compute`` would, and prints the tasks per
input chunk (the flatfield's pieces, literals in the graph, are counted too).
With ``--rate`` it also times a graph of tiny independent tasks on a local scheduler with two
single-thread worker processes: tasks per second the scheduler sustains on this machine (a lower bound
when other work shares the cores; the load average is printed).
"""

from __future__ import annotations

import argparse
import os
import time

import dask
import dask.array as da
import numpy as np
import zarr

from shadeflow.core.correct.graph import plan_pyramid, select_axes, stored_correction

CHUNKS = (64, 256, 256)


def tasks_per_chunk(shape: tuple[int, int, int]) -> tuple[int, int]:
    """(input chunks, optimised tasks) of one ZYX tile's correction with its 4-level pyramid."""
    levels = select_axes(plan_pyramid((1, 1, *shape), (1, 1, 2.0, 0.75, 0.75), (0.0,) * 5, 4), [2, 3, 4])
    source = da.zeros(shape, dtype=np.uint16, chunks=CHUNKS)
    plane = np.ones((1, *shape[1:]), np.float32)
    targets = [
        zarr.zeros(store=zarr.storage.MemoryStore(), shape=lv.shape, chunks=CHUNKS, dtype=np.uint16)
        for lv in levels
    ]
    sinks = stored_correction(source, plane, 0 * plane, levels, targets)
    graph: dict = {}
    for collection in dask.optimize(*sinks):
        graph.update(dict(collection.__dask_graph__()))
    return source.npartitions, len(graph)


def scheduler_rate(n: int) -> float:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster),
    ):
        total = (da.ones((n,), chunks=1) + 1).sum()
        n_tasks = len(dict(total.__dask_graph__()))
        started = time.perf_counter()
        total.compute()
        return n_tasks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", action="store_true", help="also time the scheduler on tiny tasks")
    args = parser.parse_args()
    for shape in [(128, 1024, 1024), (512, 1024, 1024), (128, 2048, 2048)]:
        chunks, tasks = tasks_per_chunk(shape)
        print(f"tile {shape}: {chunks} input chunks of 8 MiB, {tasks} tasks, {tasks / chunks:.2f} per chunk")
    if args.rate:
        rate = scheduler_rate(20_000)
        print(f"scheduler: {rate:.0f} tiny tasks/s (2 worker processes; load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
