"""The meanimage job's Dask graphs: plain functions on a ``distributed.Client``.

The Prefect tasks run these on the flow run's cluster; the benchmark runs them on a bare cluster.
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from distributed import Client, Event

from ..core.io.slide import Field
from ..core.meanimage import pipeline as core
from ..core.meanimage.thresholds import N_BINS, slide_thresholds
from .dask_work import field_events, field_reporter, reduce_tree, scatter

if TYPE_CHECKING:
    from .progress import Progress


@dataclass
class _ThresholdPartial:
    """Thresholds of some edge fields and their summed histograms (merges as a tree)."""

    keys: list[str]
    rows: list[np.ndarray]
    histogram: np.ndarray

    def merge(self, other: _ThresholdPartial) -> _ThresholdPartial:
        return _ThresholdPartial(
            self.keys + other.keys, self.rows + other.rows, self.histogram + other.histogram
        )


def _threshold_field(plan: core.SlidePlan, field: Field) -> _ThresholdPartial:
    thresholds, histogram = core.field_thresholds(plan, field)
    return _ThresholdPartial([field.key], [thresholds], histogram)


def _merge(a, b):
    return a.merge(b)


def thresholds_on_cluster(
    client: Client, plan: core.SlidePlan, progress: Progress | None = None
) -> core.ThresholdResult:
    """Background thresholds of a slide: one Dask task per edge field, histograms summed as a tree."""
    fields = plan.edge_fields
    n_layers = plan.slide.n_layers
    if plan.skip_masking or not fields:
        return core.ThresholdResult(
            [],
            np.zeros((0, n_layers), np.int64),
            np.zeros(n_layers, np.int64),
            np.zeros((n_layers, N_BINS), np.int64),
        )
    shared = scatter(client, plan)
    futures = [client.submit(_threshold_field, shared, f, pure=False) for f in fields]
    if progress is not None:
        for future in futures:
            future.add_done_callback(lambda _: progress.advance(1))
    merged = reduce_tree(client, futures, _merge, progress)
    order = {key: i for i, key in enumerate(merged.keys)}
    rows = np.array([merged.rows[order[f.key]] for f in fields])
    return core.ThresholdResult(fields, rows, slide_thresholds(rows), merged.histogram)


def _mask_and_stack(plan, fields, thresholds, mask_dir_url, reporter):
    return core.mask_and_stack(plan, fields, thresholds, mask_dir_url, on_field=reporter)


#: a batch's accumulator travels to its merge: on a large cluster, batches of at least this many fields
#: keep a slide's merge traffic a fraction of its fields' bytes (BENCHMARKS.md, "cost model")
FIELDS_PER_BATCH_AT_SCALE = 50
#: below this many batches the cap does not apply: a laptop's threads all work on a small slide
UNCAPPED_BATCHES = 8


def batch_count(n_fields: int, n_threads: int) -> int:
    """Batches a slide's fields are split into: one per cluster thread, but on clusters of more than
    :data:`UNCAPPED_BATCHES` threads no more than one per :data:`FIELDS_PER_BATCH_AT_SCALE` fields (the
    other threads work on other slides). The sums are integers, so the split does not change the
    mean image."""
    cap = max(UNCAPPED_BATCHES, -(-n_fields // FIELDS_PER_BATCH_AT_SCALE))
    return max(1, min(n_fields, n_threads, cap))


def stack_on_cluster(
    client: Client,
    plan: core.SlidePlan,
    thresholds: np.ndarray,
    mask_dir_url: str,
    progress: Progress | None = None,
) -> core.BatchResult:
    """Mask every field and stack the bulk ones, in batches of fields merged as a tree.

    One batch per worker thread, up to :func:`batch_count`'s cap: each batch stacks into its own
    accumulator (0.7 GiB for a Vectra slide, reusing a finished batch's memory: see ``core.buffers``),
    so memory stays at a few stacks. Progress is still per field: workers report each field as a Dask
    event.
    """
    fields = list(plan.slide.fields)
    n_batches = batch_count(len(fields), sum(client.nthreads().values()))
    batches = [fields[i::n_batches] for i in range(n_batches)]
    shared = scatter(client, plan)
    stop = Event(f"shadeflow-stop-{uuid.uuid4().hex}", client=client)  # set when a batch fails
    reporter = field_reporter(progress, stop.name)
    futures = [
        client.submit(_mask_and_stack, shared, batch, thresholds, mask_dir_url, reporter, pure=False)
        for batch in batches
    ]
    events = field_events(client, progress) if progress is not None else nullcontext()
    with events:
        return reduce_tree(client, futures, _merge, progress, on_error=stop.set)
