"""The shading estimator on a Dask array: stacks larger than memory, read chunk by chunk.

The same estimator as :func:`shadeflow.core.estimate.estimator.estimate_shading`, with its frames coming from
an (N, H, W) Dask array (zarr, TIFF files, slide fields; local or S3):

1. the frames of the robust fit (all of them, or a seeded sample of ``max_frames``) are reduced to
   block means where they are read — each task turns ``chunk_frames`` frames into a few kB per frame;
2. only when a sample was fitted, one more pass reads every frame: each task reduces its chunk and
   returns the per-block sufficient statistics (5 × blocks numbers) and its frames' baselines; the
   statistics are added in frame order, so the result is bit-identical to the in-memory path.

Peak memory is a chunk per worker thread plus the grid of the sample, whatever the number of frames.
The per-chunk functions are the plain numpy ones of ``core.estimate``; this module only owns the
chunking (the dask-image way).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .estimator import (
    EstimateSettings,
    ShadingEstimate,
    check_mask,
    chunk_statistics,
    frame_block_means,
    resolve_settings,
    run_estimate,
)
from .grid import EstimateError, GridLayout
from .mesh_background import MeshBackground


def _grid_chunk(
    frames: np.ndarray,
    layout: GridLayout,
    saturation: float | None,
    mask: np.ndarray | None,
    report=None,
    mesh: MeshBackground | None = None,
) -> np.ndarray:
    Y, V = frame_block_means(np.asarray(frames), layout, saturation, mask, mesh)
    if report is not None:
        report(len(frames))
    return np.concatenate([Y, V], axis=1)


def _statistics_chunk(
    frames: np.ndarray,
    model,
    layout: GridLayout,
    saturation: float | None,
    mask: np.ndarray | None,
    report=None,
    mesh: MeshBackground | None = None,
):
    Y, V = frame_block_means(np.asarray(frames), layout, saturation, mask, mesh)
    if report is not None:
        report(len(frames))
    return chunk_statistics(Y, V, model)


class DaskFrames:
    """Frames of an (N, H, W) Dask array; ``compute`` runs collections (``dask.compute`` or a client's).

    ``report(n)``, if given, is called on the worker after every chunk with its number of frames
    (progress); it must be picklable.
    """

    def __init__(
        self,
        array,
        mask: np.ndarray | None = None,
        compute: Callable | None = None,
        report: Callable[[int], None] | None = None,
        where: str = "images",
        mesh: MeshBackground | None = None,
    ):
        import dask

        if array.ndim != 3:
            raise EstimateError(f"{where}: expected a stack (N, H, W), got an array of shape {array.shape}")
        self.array = array
        self.n = int(array.shape[0])
        self.shape = (int(array.shape[1]), int(array.shape[2]))
        self.dtype = np.dtype(array.dtype)
        self.mask = check_mask(mask, self.n, self.shape)
        self.compute = compute or dask.compute
        self.report = report
        self.where = where
        self.mesh = mesh  # sources left out on the workers, where each chunk is read

    def _chunked(self, array, chunk: int):
        return array.rechunk({0: chunk, 1: -1, 2: -1})

    def _mask_for(self, start: int, stop: int):
        if self.mask is None or self.mask.ndim == 2:
            return self.mask
        return self.mask[start:stop]

    def grid(
        self, indices: np.ndarray, layout: GridLayout, saturation: float | None, chunk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        import dask

        sub = self.array if len(indices) == self.n else self.array[indices]
        blocks = self._chunked(sub, chunk).to_delayed().ravel()
        tasks, start = [], 0
        for block, size in zip(blocks, self._chunked(sub, chunk).chunks[0]):
            mask = (
                self.mask
                if self.mask is None or self.mask.ndim == 2
                else self.mask[indices[start : start + size]]
            )
            tasks.append(
                dask.delayed(_grid_chunk, pure=True)(block, layout, saturation, mask, self.report, self.mesh)
            )
            start += size
        results = self._run(tasks)
        stacked = np.concatenate(results, axis=0)
        g = layout.size
        return stacked[:, :g], stacked[:, g:]

    def statistics(self, model, layout: GridLayout, saturation: float | None, chunk: int):
        import dask

        chunked = self._chunked(self.array, chunk)
        tasks, start = [], 0
        for block, size in zip(chunked.to_delayed().ravel(), chunked.chunks[0]):
            tasks.append(
                dask.delayed(_statistics_chunk, pure=True)(
                    block,
                    model,
                    layout,
                    saturation,
                    self._mask_for(start, start + size),
                    self.report,
                    self.mesh,
                )
            )
            start += size
        return list(self._run(tasks))

    def _run(self, tasks: list) -> list:
        try:
            return list(self.compute(*tasks))
        except EstimateError as exc:
            raise EstimateError(f"{self.where}: {exc}") from None


def estimate_shading_dask(
    array,
    darkfield: bool = False,
    *,
    mask: np.ndarray | None = None,
    known_darkfield: np.ndarray | float | None = None,
    settings: EstimateSettings | None = None,
    compute: Callable | None = None,
    report: Callable[[int], None] | None = None,
    where: str = "images",
) -> ShadingEstimate:
    """:func:`~shadeflow.core.estimate.estimator.estimate_shading` of an (N, H, W) Dask array (module
    description)."""
    settings = resolve_settings(settings, darkfield, known_darkfield)
    source = DaskFrames(array, mask, compute, report, where, settings.mesh())
    return run_estimate(source, settings, known_darkfield, where)
