"""Flatfield (and darkfield) estimated from the images themselves.

:func:`estimate_shading` takes a stack of 2-D images — the fields of a slide, the planes of a tile,
the frames of a timelapse — and returns a smooth flatfield S (mean 1), optionally a darkfield D, and
each frame's baseline B (its background level at unit flatfield), for the model

.. math:: I_n(x) = S(x)\\,B_n + D(x) + \\text{specimen}_n(x).

Method (a methods-section paragraph). Each frame is reduced to block means on a grid of about 64
blocks across (``core.estimate.grid``). On that grid the *floor* of the stack — the blocks that show
no specimen — is fitted by iteratively reweighted least squares with Tukey's biweight on relative
residuals, scaled by the noise of the floor (``core.estimate.floor_fit``): S and D are low-order Legendre
polynomials (degree 6, and 2–4 for D: chosen by how well it predicts held-out frames,
``core.estimate.darkfield_degree``), B is a per-frame level, and the specimen, saturated blocks and outlier
frames get no weight. The fit starts from low quantiles and a per-frame quadratic detrending that finds
the floor before the darkfield is known. The darkfield's component along the flatfield, which images
alone cannot determine, is fixed by requiring the least-curved darkfield. Larger stacks are fitted on a
seeded subsample of frames and then refined with one pass of per-block sufficient statistics over
every frame, so memory depends on the grid, not on the number of frames.

Which method answers (``EstimateSettings.method``): ``floor`` is the above; ``surface`` fits free
surfaces with cross-validated smoothness (``core.estimate.surface_fit``), which follow a sharp aperture
edge; ``lines`` fits per-block quantile lines over the frames (``core.estimate.quantile_lines``: no dark
background assumed, stationary content needed); ``auto``, the default, is the floor, falling back to
surfaces for a flatfield-only fit the floor refuses or does not converge on, and to quantile lines for a
darkfield fit the floor refuses (:func:`run_estimate`). Every fit is repeated on alternate halves of its
frames, and a flatfield that moves between them is reported as poorly determined
(``core.estimate.holdout``).

Compared with BaSiC (Peng et al., Nat. Commun. 8, 14836, 2017; BaSiCPy): the same image model, but a
robust regression on a polynomial basis instead of a sparse-plus-low-rank decomposition with DCT
sparsity, an explicit noise scale instead of a reweighting constant, and a stated prior for the
darkfield's gauge instead of an L1 penalty.

Example
-------
>>> result = estimate_shading(stack, darkfield=True)          # stack: (N, H, W)
>>> corrected = (stack - result.darkfield) / result.flatfield
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from . import surface_fit
from .darkfield_degree import choose_darkfield_degree
from .floor_fit import (
    FitSettings,
    GridModel,
    basis_terms,
    block_statistics,
    fit_grid,
    frame_baselines,
    least_curvature_gauge,
    relative_weights,
    solve_statistics,
)
from .grid import (
    DEFAULT_GRID,
    LINES_GRID,
    SURFACE_GRID,
    EstimateError,
    GridLayout,
    block_means,
    coarsen,
    describe_layout,
    evaluate_field,
    frames_needed,
    full_resolution,
    grid_layout,
    single_threaded_blas,
)
from .holdout import SPREAD_LIMIT, split_half_spread
from .mesh_background import BACKGROUNDS, MeshBackground, sky_weights
from .quantile_lines import fit_lines

METHOD = (
    "shadeflow floor regression (robust IRLS on block means, Legendre basis, least-curvature darkfield gauge)"
)
SURFACE_METHOD = (
    "shadeflow surface regression (robust IRLS on block means, thin-plate surfaces with cross-validated "
    "smoothness, "
    "bounded darkfield gauge)"
)
LINES_METHOD = (
    "shadeflow quantile lines (per-block quantiles over frames regressed on their spatial means, darkfield "
    "polynomial of cross-validated degree, least-curvature gauge capped below the data)"
)
METHODS = ("auto", "floor", "surface", "lines")

__all__ = ["EstimateError", "EstimateSettings", "ShadingEstimate", "estimate_shading", "METHOD"]


#: the floor darkfield's degree where it is not chosen by cross-validation (``darkfield_degree`` None)
DEFAULT_DARKFIELD_DEGREE = 2


@dataclass(frozen=True)
class EstimateSettings:
    """Parameters of the estimator (all recorded with its outputs)."""

    darkfield: bool = False  # estimate a darkfield (else D = 0, or the known darkfield)
    # "floor": Legendre polynomials; "surface": free surfaces, cross-validated smoothness; "lines": per-block
    # quantile lines (no dark background assumed); "auto": floor, else surface (flatfield only) or lines
    method: str = "auto"
    degree: int = 6  # floor: total degree of the flatfield's Legendre polynomial
    # floor: total degree of the darkfield's polynomial (before the gauge); None: chosen by cross-validation
    darkfield_degree: int | None = None
    # surface: the flatfield's smoothing length in pixels; None: cross-validated
    smoothness: float | None = None
    # surface: the darkfield's smoothing length in units of the flatfield's
    darkfield_smoothness: float = 16.0
    # surface: separate S and D by order statistics; None: when levels hardly vary
    order_statistics: bool | None = False
    # blocks across the longer side; None: 64 (floor), 128 (surface) or 96 (lines; auto per method used)
    grid: int | None = None
    window: float = 3.0  # biweight half-width, in units of the floor's noise
    max_frames: int = 1000  # the robust fit uses at most this many frames (seeded subsample)
    chunk_frames: int = 64  # frames per chunk of the final pass (and per Dask task)
    saturation: float | None = None  # pixels at or above void their block; None: the integer dtype's max
    max_iterations: int = 25
    tolerance: float = 1e-4
    seed: int = 0
    # "mesh": sources found against each frame's mesh background get no weight (core.estimate.mesh_background)
    background: str = "none"
    mesh_box: int | None = None  # mesh: box side in px; None: from the image size

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise EstimateError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.background not in BACKGROUNDS:
            raise EstimateError(f"background {self.background!r} is not one of {', '.join(BACKGROUNDS)}")
        if self.mesh_box is not None and self.mesh_box < 4:
            raise EstimateError(f"mesh box of {self.mesh_box} px: it must be at least 4 px")
        if self.smoothness is not None and not 0 < self.smoothness <= 1000:
            raise EstimateError(
                f"smoothness {self.smoothness} must be a length in pixels between 0 and 1000 (or automatic)"
            )
        if not 0 <= (self.darkfield_degree or 0) <= self.degree <= 12:
            raise EstimateError(
                f"degrees must satisfy 0 ≤ darkfield_degree ({self.darkfield_degree}) ≤ degree "
                f"({self.degree}) ≤ 12"
            )
        if (
            self.window <= 0
            or self.max_frames < 1
            or self.chunk_frames < 1
            or (self.grid is not None and self.grid < 8)
        ):
            raise EstimateError(
                "window must be positive, max_frames and chunk_frames at least 1, grid at least 8"
            )

    def mesh(self) -> MeshBackground | None:
        """How sources are removed before the fit, or None (``background`` none)."""
        return MeshBackground(self.mesh_box) if self.background == "mesh" else None

    @property
    def grid_blocks(self) -> int:
        if self.grid is not None:
            return self.grid
        return {"surface": SURFACE_GRID, "lines": LINES_GRID}.get(self.method, DEFAULT_GRID)

    def fit_settings(self) -> FitSettings:
        return FitSettings(
            self.darkfield,
            self.degree,
            DEFAULT_DARKFIELD_DEGREE if self.darkfield_degree is None else self.darkfield_degree,
            self.window,
            self.max_iterations,
            self.tolerance,
        )

    def surface_settings(
        self, dtype: np.dtype, layout: GridLayout, nonnegative: bool
    ) -> surface_fit.FitSettings:
        """The surface fit's settings for images of ``dtype`` on ``layout``; ``nonnegative``: the images
        hold no negative value (raw camera counts), so neither can their darkfield."""
        blocks = None if self.smoothness is None else max(0.1, self.smoothness / layout.block)
        return surface_fit.FitSettings(
            self.darkfield,
            blocks,
            self.darkfield_smoothness,
            self.window,
            max(self.max_iterations, 30),
            self.tolerance,
            self.order_statistics,
            nonnegative_darkfield=nonnegative,
            quantisation=0.29 if np.dtype(dtype).kind in "ui" else 0.0,
        )


@dataclass
class ShadingEstimate:
    """What :func:`estimate_shading` found."""

    flatfield: np.ndarray  # (H, W) float32, mean 1
    darkfield: np.ndarray  # (H, W) float32 (zeros when neither estimated nor given)
    baseline: np.ndarray  # (N,) float64: each frame's background level at unit flatfield; NaN if unused
    frames_used: int
    # frames that did not enter the final fit (outliers, no background visible, no light)
    frames_rejected: list[int]
    diagnostics: dict[str, Any]
    settings: EstimateSettings
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """One row of numbers for tables and logs."""
        return {
            "frames": int(self.baseline.size),
            "used": self.frames_used,
            "rejected": len(self.frames_rejected),
            "flatfield_min": round(float(self.flatfield.min()), 4),
            "flatfield_max": round(float(self.flatfield.max()), 4),
            "darkfield_mean": round(float(self.darkfield.mean()), 3),
            "baseline_median": round(float(np.nanmedian(self.baseline)), 3)
            if np.isfinite(self.baseline).any()
            else None,
            "noise_tau": round(float(self.diagnostics["tau"]), 5),
            "converged": bool(self.diagnostics["converged"]),
            "seconds": round(float(self.diagnostics["seconds"]), 3),
            # --background mesh: the share of the fitted pixels kept as sky (None without)
            "sky_share": None
            if self.diagnostics.get("sky_share") is None
            else round(float(self.diagnostics["sky_share"]), 4),
        }


# ---------------------------------------------------------------------------------------------
# frame sources: where block means come from (memory here; Dask in core.estimate.chunked)


class MemoryFrames:
    """Frames held in memory: an (N, H, W) array or a sequence of (H, W) arrays of one shape."""

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        mask: np.ndarray | None = None,
        where: str = "images",
        mesh: MeshBackground | None = None,
    ):
        if isinstance(images, np.ndarray):
            if images.ndim != 3:
                raise EstimateError(
                    f"{where}: expected a stack (N, H, W), got an array of shape {images.shape}"
                )
            self.frames = images
        else:
            frames = list(images)
            if not frames:
                raise EstimateError(f"{where}: no images")
            first = np.asarray(frames[0]).shape
            for i, f in enumerate(frames):
                if np.ndim(f) != 2:
                    raise EstimateError(f"{where}: image {i} has shape {np.shape(f)}, expected a 2-D image")
                if np.shape(f) != first:
                    raise EstimateError(
                        f"{where}: image {i} is {np.shape(f)[0]}×{np.shape(f)[1]} but image 0 is "
                        f"{first[0]}×{first[1]}; all images must have one shape"
                    )
            self.frames = np.stack(frames)
        self.n = int(self.frames.shape[0])
        self.shape = (int(self.frames.shape[1]), int(self.frames.shape[2]))
        self.dtype = self.frames.dtype
        self.mask = check_mask(mask, self.n, self.shape)
        self.mesh = mesh

    def grid(
        self, indices: np.ndarray, layout: GridLayout, saturation: float | None, chunk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        parts = [
            self._means(indices[i : i + chunk], layout, saturation) for i in range(0, len(indices), chunk)
        ]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def statistics(
        self, model: GridModel, layout: GridLayout, saturation: float | None, chunk: int
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for start in range(0, self.n, chunk):
            Y, V = self._means(np.arange(start, min(self.n, start + chunk)), layout, saturation)
            out.append(chunk_statistics(Y, V, model))
        return out

    def _means(
        self, indices: np.ndarray, layout: GridLayout, saturation: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = None if self.mask is None else (self.mask if self.mask.ndim == 2 else self.mask[indices])
        frames = (
            self.frames[indices]
            if not _is_range(indices)
            else self.frames[int(indices[0]) : int(indices[-1]) + 1]
        )
        try:
            return frame_block_means(frames, layout, saturation, mask, self.mesh, int(indices[0]))
        except EstimateError as exc:
            raise EstimateError(f"images {int(indices[0])}–{int(indices[-1])}: {exc}") from None


def frame_block_means(
    frames: np.ndarray,
    layout: GridLayout,
    saturation: float | None,
    mask: np.ndarray | None,
    mesh: MeshBackground | None,
    first: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~shadeflow.core.estimate.grid.block_means` of a chunk of frames, their sources left out first
    when ``mesh`` is given (``core.estimate.mesh_background``); ``first``: the chunk's first frame index."""
    if mesh is None:
        return block_means(frames, layout, saturation, mask)
    # one frame at a time: the weights are per frame, and a chunk's worth in float64 would be GBs at 4k²
    parts = []
    for i in range(len(frames)):
        frame = np.asarray(frames[i : i + 1])
        own = mask if mask is None or mask.ndim == 2 else mask[i : i + 1]
        parts.append(block_means(frame, layout, saturation, sky_weights(frame, own, mesh, first + i)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _is_range(indices: np.ndarray) -> bool:
    return len(indices) > 0 and bool(np.all(np.diff(indices) == 1))


def check_mask(mask: np.ndarray | None, n: int, shape: tuple[int, int]) -> np.ndarray | None:
    """A weight mask must be (H, W) or (N, H, W), finite and non-negative, and leave some weight."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape not in (tuple(shape), (n, *shape)):
        raise EstimateError(
            f"weight mask of shape {mask.shape} does not match the images: expected {tuple(shape)} (one for "
            f"all) or {(n, *shape)} (one per image)"
        )
    if mask.dtype.kind not in "biuf":
        raise EstimateError(f"weight mask dtype {mask.dtype} is not boolean or numeric")
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise EstimateError("weight mask holds non-finite values")
    if (mask < 0).any():
        raise EstimateError("weight mask holds negative weights")
    if not mask.any():
        raise EstimateError("weight mask is zero everywhere: nothing left to estimate from")
    return mask


def chunk_statistics(Y: np.ndarray, V: np.ndarray, model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block sufficient statistics of one chunk of frames under ``model`` (final pass), with the
    chunk's baselines and which frames contributed. Plain numpy: runs on a worker as it is."""
    if isinstance(model, surface_fit.GridModel):
        return surface_fit.chunk_statistics(Y, V, model)
    B, w = frame_baselines(Y, V, model)
    S, D = model.fields()
    fixed = 0.0 if model.known_darkfield is None else model.known_darkfield
    return block_statistics(Y - fixed, B, relative_weights(w, B, S, D)), B, w.sum(axis=1) > 0


# ---------------------------------------------------------------------------------------------
# the estimator


def estimate_shading(
    images: np.ndarray | Sequence[np.ndarray],
    darkfield: bool = False,
    *,
    mask: np.ndarray | None = None,
    known_darkfield: np.ndarray | float | None = None,
    settings: EstimateSettings | None = None,
    where: str = "images",
) -> ShadingEstimate:
    """Flatfield, darkfield and per-frame baselines of a stack of images (module description).

    Parameters
    ----------
    images : ndarray or sequence of ndarray
        (N, H, W), or N images of one shape; any real dtype.
    darkfield : bool
        Estimate a darkfield D (else D = 0, or ``known_darkfield``).
    mask : ndarray, optional
        Weights (H, W) for every image or (N, H, W) per image; 0 leaves a pixel out.
    known_darkfield : ndarray or float, optional
        A darkfield (camera offset) to subtract instead of estimating one.
    settings : EstimateSettings, optional
        Everything else (degrees, grid, window, subsample size, seed); ``darkfield`` overrides its field.

    Returns
    -------
    ShadingEstimate

    Raises
    ------
    EstimateError
        Fewer images than needed (16 with a darkfield, 8 without), images of different shapes, a constant
        or all-zero stack, non-finite values, a mask of the wrong shape.

    References
    ----------
    Peng, T. et al. A BaSiC tool for background and shading correction of optical microscopy images.
    Nat. Commun. 8, 14836 (2017). Smith, K. et al. CIDRE: an illumination-correction method for optical
    microscopy. Nat. Methods 12, 404–406 (2015).
    """
    settings = resolve_settings(settings, darkfield, known_darkfield)
    return run_estimate(MemoryFrames(images, mask, where, settings.mesh()), settings, known_darkfield, where)


def resolve_settings(settings: EstimateSettings | None, darkfield: bool, known_darkfield) -> EstimateSettings:
    settings = replace(settings or EstimateSettings(), darkfield=bool(darkfield))
    if settings.darkfield and known_darkfield is not None:
        raise EstimateError("give a known darkfield or ask for one to be estimated, not both")
    return settings


def choose_frames(n: int, max_frames: int, seed: int) -> np.ndarray:
    """The frames of the robust fit: all of them, or a seeded sample of ``max_frames`` in order."""
    if n <= max_frames:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n, 7]).choice(n, max_frames, replace=False))


def check_mesh_box(settings: EstimateSettings, shape: tuple[int, int], where: str) -> None:
    """``--mesh-box`` must leave at least 2×2 boxes in the images."""
    if settings.background == "mesh" and settings.mesh_box is not None and 2 * settings.mesh_box > min(shape):
        raise EstimateError(
            f"{where}: --mesh-box {settings.mesh_box} is more than half the images' shorter side "
            f"({shape[0]}×{shape[1]}); the mesh needs at least 2×2 boxes"
        )


class ContentError(EstimateError):
    """The images themselves cannot be fitted (unreadable, empty, constant, fully masked): no method can do
    better."""


def run_estimate(
    source, settings: EstimateSettings, known_darkfield, where: str = "images"
) -> ShadingEstimate:
    """The estimator over any frame source (memory or Dask): checks, then the chosen method's fit
    (:func:`_fit`), whose darkfield is then checked against what the images' type can hold."""
    return _note_negative_darkfield(_fit(source, settings, known_darkfield, where), source.dtype)


#: a fitted darkfield this far below zero (counts, and share of the background level) is noted
NEGATIVE_DARKFIELD_COUNTS = 3.0
NEGATIVE_DARKFIELD_SHARE = 0.02


def _note_negative_darkfield(result: ShadingEstimate, dtype: np.dtype) -> ShadingEstimate:
    """Images of an unsigned type cannot read below zero, so no camera offset is negative: a fitted
    darkfield clearly below zero (BaSiC's nanog timelapse: −34 … −29 counts, from a background that
    brightens faster than the frames' levels) is not the camera's and has taken part of the signal —
    said in the notes, with the advice, and recorded in the diagnostics."""
    if not result.settings.darkfield or np.dtype(dtype).kind != "u":
        return result
    lowest = float(np.min(result.darkfield))
    level = float(np.nanmedian(result.baseline)) if np.isfinite(result.baseline).any() else 0.0
    if lowest >= -max(NEGATIVE_DARKFIELD_COUNTS, NEGATIVE_DARKFIELD_SHARE * abs(level)):
        return result
    result.diagnostics["negative_darkfield_counts"] = lowest
    result.notes.append(
        f"the darkfield reaches {lowest:.3g} counts, below zero, which images of type {np.dtype(dtype)} "
        "cannot read: it is not the camera's offset and the flatfield may be off with it — give the camera "
        "offset if you know it (--camera-offset), or fit without --darkfield"
    )
    return result


def _fit(source, settings: EstimateSettings, known_darkfield, where: str) -> ShadingEstimate:
    """Checks, then the chosen method's fit.

    Every fit is refitted on alternate halves of its frames (``core.estimate.holdout``); a flatfield
    that moves by more than :data:`~shadeflow.core.estimate.holdout.SPREAD_LIMIT` % between the halves is
    poorly determined by the images, and the notes say so.

    ``auto`` fits the floor's polynomials first (fast, and the most accurate where the illumination is
    smooth). Without a darkfield to estimate, it falls back to free surfaces when that fit is refused (a
    polynomial cannot follow a sharp aperture edge) or does not converge; the notes say so. With
    ``--darkfield`` it does not: of the 13 darkfield fits the polynomial refused on the randomised sweep,
    surfaces converged on 6, and 2 of those were 7–8 % off with no sign that would let us refuse them.
    There it tries quantile lines instead, which assume no dark background but stationary content, and
    answers only when their flatfield hardly moves between alternate halves of the frames (split-half
    spread within the limit); otherwise a refusal with advice. Where the floor answers, it answers, even
    when flagged: preferring well-determined lines to a flagged polynomial helped 5 of 6 such sweep answers
    but made two of the test suite's hard cases (sparse at 7 counts, empty with level steps) 3–4 % off
    from within 1.5 % (BENCHMARKS.md). One exception: flatfield-only, where the images hold a clear offset,
    well-determined lines answer instead (:func:`_prefer_lines_under_an_offset`)."""
    started = time.perf_counter()
    need = frames_needed(settings.darkfield)
    if source.n < need:
        raise EstimateError(
            f"{where}: {source.n} image{'s' if source.n != 1 else ''}; the estimator needs at least "
            f"{need}{' to estimate a darkfield' if settings.darkfield else ''}"
        )
    if source.dtype.kind not in "biuf":
        raise EstimateError(f"{where}: dtype {source.dtype} is not a real number type")
    check_mesh_box(settings, source.shape, where)
    if settings.method == "lines":
        return _note_spread(_estimate_lines(source, settings, known_darkfield, where, started))
    if settings.method != "auto":
        return _note_spread(_estimate_with(source, settings, known_darkfield, where, started))
    if settings.darkfield:
        try:
            floor = _estimate_with(source, replace(settings, method="floor"), known_darkfield, where, started)
        except ContentError:
            raise
        except EstimateError as exc:
            reason = str(exc).removeprefix(where + ": ")
        else:
            return replace(_note_spread(floor), settings=settings)
        found, lines_reason = _determined_lines(source, settings, known_darkfield, where, started)
        if found is None:
            advice = "" if "--method surface" in reason else DARKFIELD_REFUSED_ADVICE
            raise EstimateError(f"{where}: {reason}; {lines_reason}{advice}")
        found.notes.insert(
            0,
            f"the polynomial fit was refused ({reason}); fitted with quantile lines instead (--method lines)",
        )
        return replace(found, settings=settings)
    try:
        floor = _estimate_with(source, replace(settings, method="floor"), known_darkfield, where, started)
        if floor.diagnostics["converged"]:
            return replace(
                _note_spread(_prefer_lines_under_an_offset(floor, source, settings, where)), settings=settings
            )
        why = f"the polynomial fit did not converge ({floor.diagnostics['iterations']} iterations)"
    except ContentError:
        raise
    except EstimateError as exc:
        floor, why = None, f"the polynomial fit was refused: {str(exc).removeprefix(where + ': ')}"
        # no floor under the frames (brightfield, confluent, an aperture's dark surround): the quantile
        # lines assume no background; they answer if the frames determine them (BENCHMARKS.md, sweep)
        found, _ = _determined_lines(source, settings, known_darkfield, where, started)
        if found is not None:
            found.notes.insert(0, f"{why}; fitted with quantile lines instead (--method lines)")
            return replace(found, settings=settings)
    try:
        surface = _estimate_with(source, replace(settings, method="surface"), known_darkfield, where, started)
    except EstimateError as exc:
        if floor is None:
            raise EstimateError(
                f"{where}: neither fit answers — {why}; with free surfaces: "
                f"{str(exc).removeprefix(where + ': ')}"
            ) from exc
        return replace(_note_spread(floor), settings=settings)
    if floor is not None and not surface.diagnostics["converged"]:
        # neither converged: the polynomial's answer, with its notes
        return replace(_note_spread(floor), settings=settings)
    surface.notes.insert(0, f"{why}; fitted with free surfaces instead (--method surface)")
    return replace(_note_spread(surface), settings=settings)


def _prefer_lines_under_an_offset(
    floor: ShadingEstimate, source, settings: EstimateSettings, where: str
) -> ShadingEstimate:
    """A flatfield-only polynomial fit of images with a clear offset takes the offset for shading unevenly:
    through the blocks it takes for the floor, which move with the specimen. The quantile lines' flatfield
    (the frames' robust mean level) folds it in evenly, so it is the same whatever the specimen: wsi_brain's
    planted-shading check went from 1.8 % to 0.06 % (BENCHMARKS.md). The lines answer if the frames
    determine them; the offset note stays either way."""
    probe = floor.diagnostics.get("offset_probe")
    if not (probe and probe["clear"]):
        return floor
    found, _ = _determined_lines(source, settings, None, where, time.perf_counter())
    if found is None:
        return floor
    offset_notes = [n for n in floor.notes if n.startswith("the images hold an offset")]
    found.notes[:0] = offset_notes + [
        "a flatfield-only polynomial folds that offset in unevenly (through the blocks it takes for "
        "background); fitted with quantile lines instead, which fold it in evenly (--method lines)"
    ]
    found.diagnostics["offset_probe"] = probe
    return found


#: what a refused darkfield fit under ``auto`` suggests
DARKFIELD_REFUSED_ADVICE = (
    "; give the camera offset if you know it (--camera-offset), fit without --darkfield, or try --method "
    "surface (whose "
    "darkfield is less "
    "reliable: check it)"
)


def _determined_lines(
    source, settings: EstimateSettings, known_darkfield, where: str, started: float
) -> tuple[ShadingEstimate | None, str]:
    """``auto``'s fallback: the quantile lines' estimate if it answers and the frames determine it (its
    flatfield hardly moves between alternate halves), else None and why not."""
    try:
        found = _estimate_lines(source, replace(settings, method="lines"), known_darkfield, where, started)
    except EstimateError as exc:
        return None, f"quantile lines: {str(exc).removeprefix(where + ': ')}"
    if not _determined(found):
        spread = found.diagnostics["split_half_spread_pct"]
        return None, (
            f"the quantile lines' flatfield moves by {spread:.1f} % between alternate halves of the frames"
        )
    return found, ""


def _determined(result: ShadingEstimate) -> bool:
    """The fit's flatfield hardly moves between alternate halves of its frames (``core.estimate.holdout``)."""
    return result.diagnostics["split_half_spread_pct"] <= SPREAD_LIMIT


def _note_spread(result: ShadingEstimate) -> ShadingEstimate:
    """Say so in the notes when the flatfield is poorly determined (split-half spread above the limit)."""
    spread = result.diagnostics["split_half_spread_pct"]
    if not _determined(result):
        moved = (
            f"fitted on alternate halves of the frames, the flatfield moves by {spread:.1f} % (RMS)"
            if math.isfinite(spread)
            else "the same fit is refused on one of two alternate halves of the frames"
        )
        result.notes.append(
            f"{moved}: the images determine the flatfield poorly and it may be off by several percent — "
            "check it, or fit more frames"
        )
    return result


def _saturation(settings: EstimateSettings, dtype: np.dtype) -> float | None:
    if settings.saturation is not None:
        return settings.saturation
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else None


def _read_grid(source, frames: np.ndarray, layout: GridLayout, saturation, settings, where: str):
    """Block means of ``frames``; a frame that cannot be read is the input's fault, whatever the method."""
    try:
        Y, V = source.grid(frames, layout, saturation, settings.chunk_frames)
    except ContentError:
        raise
    except EstimateError as exc:
        raise ContentError(str(exc)) from None
    _check_content(Y, V, where)
    return Y, V


def _estimate_lines(
    source, settings: EstimateSettings, known_darkfield, where: str, started: float
) -> ShadingEstimate:
    """The quantile lines' estimate (``core.estimate.quantile_lines``) on up to ``max_frames`` frames; each
    frame's baseline is the median over blocks of (Y − D)/S (no background is assumed)."""
    layout = grid_layout(source.shape, settings.grid_blocks)
    saturation = _saturation(settings, source.dtype)
    known_grid = _known_on_grid(known_darkfield, layout, where)
    frames = choose_frames(source.n, settings.max_frames, settings.seed)
    Y, V = _read_grid(source, frames, layout, saturation, settings, where)
    if known_grid is not None:
        # the lines take any offset for structure: with a given darkfield, most frames must rise above it
        above = np.where(V > 0, Y - known_grid, np.nan)
        live = int((np.nanmedian(above, axis=1) > 0).sum())
        if live < len(frames) / 2:
            raise EstimateError(
                f"{where}: only {live} of {len(frames)} images hold light above the darkfield; a flatfield "
                "cannot be estimated from them"
            )
    try:
        with single_threaded_blas():
            fit = fit_lines(Y, V, layout, settings.darkfield, known_grid)
    except EstimateError as exc:
        raise EstimateError(f"{where}: {exc}") from None
    flat = full_resolution(fit.flat, layout)
    scale = float(flat.mean())
    flat /= scale
    if settings.darkfield:
        dark = full_resolution(fit.dark, layout)
    elif known_darkfield is not None:
        dark = np.broadcast_to(np.asarray(known_darkfield, np.float64), source.shape).copy()
    else:
        dark = np.zeros(source.shape)
    check_plausible(flat, dark, where)
    levels = np.where(V > 0, (Y - fit.dark) / fit.flat, np.nan)
    baseline = np.full(source.n, np.nan)
    baseline[frames] = np.nanmedian(np.where(np.isfinite(levels), levels, np.nan), axis=1) * scale
    diagnostics = {
        "method": LINES_METHOD,
        "method_used": "lines",
        "grid": describe_layout(layout),
        "block_px": layout.block,
        "fit_frames": int(len(frames)),
        "iterations": 1,
        "converged": True,
        "tau": float("nan"),
        "baseline_spread": None,
        "smoothness_px": fit.diagnostics["smoothing_blocks"] * layout.block,
        "order_statistics": True,
        "offset_probe": None,
        "seconds": time.perf_counter() - started,
        "saturation": saturation,
        **fit.diagnostics,
    }
    rejected = [int(i) for i in np.setdiff1d(np.arange(source.n), frames)]
    return ShadingEstimate(
        flat.astype(np.float32),
        dark.astype(np.float32),
        baseline,
        len(frames),
        rejected,
        diagnostics,
        settings,
        list(fit.notes),
    )


def _estimate_with(
    source, settings: EstimateSettings, known_darkfield, where: str, started: float
) -> ShadingEstimate:
    """One method's estimate (``settings.method`` is floor or surface): robust fit, final pass, fields."""
    layout = grid_layout(source.shape, settings.grid_blocks)
    saturation = _saturation(settings, source.dtype)
    known_grid = _known_on_grid(known_darkfield, layout, where)
    fit_frames = choose_frames(source.n, settings.max_frames, settings.seed)
    Y, V = _read_grid(source, fit_frames, layout, saturation, settings, where)
    sky_share = float(V.mean())
    surface = settings.method == "surface"
    surface_settings = settings.surface_settings(source.dtype, layout, bool(Y[V > 0].min() >= 0))

    floor_settings = settings.fit_settings()

    def fit_floor(Y: np.ndarray, V: np.ndarray, floor_settings: FitSettings) -> GridModel:
        model = fit_grid(Y, V, layout, floor_settings, known_grid)
        if settings.darkfield:
            check_darkfield_below_data(model, Y, V, where)
        return model

    def fit(Y: np.ndarray, V: np.ndarray) -> GridModel | surface_fit.GridModel:
        if surface:
            return surface_fit.fit_grid(Y, V, layout, surface_settings, known_grid)
        return fit_floor(Y, V, floor_settings)

    with single_threaded_blas():
        choice = None
        if not surface and settings.darkfield and settings.darkfield_degree is None:
            choice = choose_darkfield_degree(Y, V, floor_settings, fit_floor)
            floor_settings = replace(floor_settings, darkfield_degree=choice.degree)
        fitted = fit(Y, V)
        if choice is not None and choice.spread is not None:
            spread = choice.spread
        else:
            spread = split_half_spread(Y, V, lambda Y, V: fit(Y, V).fields()[0])
        offset = (
            None if settings.darkfield or known_grid is not None else offset_probe(Y, V, layout, settings)
        )
    model = fitted
    if len(fit_frames) == source.n:  # every frame is on the grid already: the final pass needs no second read
        step = settings.chunk_frames
        with single_threaded_blas():
            parts = [
                chunk_statistics(Y[i : i + step], V[i : i + step], model) for i in range(0, source.n, step)
            ]
    else:
        del Y, V
        parts = source.statistics(model, layout, saturation, settings.chunk_frames)
    stats = parts[0][0].copy()
    for part in parts[1:]:  # in frame order: the same sum on every path
        stats += part[0]
    baseline = np.concatenate([p[1] for p in parts])
    used = np.concatenate([p[2] for p in parts])
    with single_threaded_blas():
        if surface:
            model = surface_fit.final_step(model, stats) if len(fit_frames) < source.n else model
            flat, dark, scale = _surface_fields(model, source.shape, known_darkfield)
        else:
            model = _final_model(model, stats)
            flat, dark, scale = _full_fields(model, source.shape, known_darkfield)
    check_plausible(flat, dark, where)
    baseline = np.where(used, baseline * scale, np.nan)
    notes = list(model.notes)
    if choice is not None and choice.degree != choice.default:
        # said, as a warning: on the sweep two of three such answers were right (0.4, 0.5 %), one 3.6 % off
        refused = (
            f" (degree {choice.default} is refused on one of two halves of them)" if choice.rescued else ""
        )
        notes.append(
            f"the darkfield is more curved than a polynomial of degree {choice.default}: degree "
            f"{choice.degree} predicts the frames left out better{refused}; a polynomial may not hold "
            "such a darkfield exactly, and the flatfield rests on it — check it, or give the darkfield if "
            "you know it"
        )
    if offset is not None and offset["clear"]:
        notes.append(
            f"the images hold an offset of about {offset['counts']:.3g} counts ({offset['share']:.0%} of "
            "the mean signal) that a "
            "flatfield-only fit folds into the flatfield; estimate it with --darkfield or give the camera "
            "offset (--camera-offset)"
        )
    seconds = time.perf_counter() - started
    rejected = [int(i) for i in np.flatnonzero(~used)]  # outliers, frames with no background or no light
    mesh = settings.mesh()
    diagnostics = {
        "method": (SURFACE_METHOD if surface else METHOD)
        + (f"; {mesh.describe(source.shape)}" if mesh else ""),
        "background": settings.background,
        "mesh_box_px": mesh.box_for(source.shape) if mesh else None,
        # share of the fitted frames' pixels that entered the fit (sources, masks, saturation left out)
        "sky_share": sky_share if mesh else None,
        "method_used": settings.method,
        "grid": describe_layout(layout),
        "block_px": layout.block,
        "fit_frames": int(len(fit_frames)),
        "iterations": model.iterations,
        "converged": model.converged,
        "tau": float(np.median(model.tau)),
        "baseline_spread": model.baseline_spread,
        "smoothness_px": model.smoothness * layout.block if surface else None,
        "order_statistics": model.order_statistics if surface else False,
        "offset_probe": offset,
        "split_half_spread_pct": spread,
        "darkfield_degree": None if surface or not settings.darkfield else floor_settings.darkfield_degree,
        # held-out floor loss of each darkfield degree tried (∞: refused on a half); None: not chosen so
        "darkfield_degree_losses": None
        if choice is None
        else {str(d): (round(v, 6) if math.isfinite(v) else None) for d, v in choice.losses.items()},
        "seconds": seconds,
        "saturation": saturation,
    }
    return ShadingEstimate(flat, dark, baseline, int(used.sum()), rejected, diagnostics, settings, notes)


#: a flatfield whose brightest pixel is more than this many times its dimmest is not a plausible optic
MAX_FLATFIELD_RANGE = 100.0
#: an offset is "clear" above this share of the mean signal (and three times the floor's noise)
OFFSET_SHARE = 0.02


def offset_probe(
    Y: np.ndarray, V: np.ndarray, layout: GridLayout, settings: EstimateSettings
) -> dict[str, Any] | None:
    """For a flatfield-only fit: what a darkfield fit of the same block means finds — the mean darkfield
    in counts and as a share of the mean signal — and whether that offset is clear (above
    :data:`OFFSET_SHARE` of the signal and three times the floor's noise). None if that fit fails."""
    probe_settings = replace(settings, method="floor", darkfield=True, max_iterations=15)
    # always the floor's polynomial fit, on a grid of at most 64 blocks across: the probe asks for a mean
    # offset, not a sharp surface; a two-field surface fit would cost more than the fit it checks, and
    # its darkfield level, which only the gauge fixes, flagged offsets in clean stacks
    while max(layout.ny, layout.nx) > DEFAULT_GRID and min(layout.ny, layout.nx) >= 16:
        Y, V, layout = coarsen(Y, V, layout)
    try:
        probe = fit_grid(Y, V, layout, probe_settings.fit_settings())
        dark = probe.fields()[1]
    except EstimateError:
        return None
    level = float(np.median(Y[V > 0]))
    counts = float(np.mean(dark))
    share = counts / level if level > 0 else 0.0
    noise = float(np.median(probe.tau)) * level
    return {"counts": counts, "share": share, "clear": bool(share > OFFSET_SHARE and counts > 3 * noise)}


def check_plausible(flat: np.ndarray, dark: np.ndarray, where: str) -> None:
    """Refuse profiles no optics produce, with advice: non-finite values, or a flatfield spanning more
    than :data:`MAX_FLATFIELD_RANGE`× (the floor method also refuses a flatfield that is not positive)."""
    if not (np.isfinite(flat).all() and np.isfinite(dark).all()):
        raise EstimateError(
            f"{where}: the fit produced non-finite profiles; check the images for constant or empty frames"
        )
    span = float(flat.max() / flat.min()) if flat.min() > 0 else float("inf")
    if span > MAX_FLATFIELD_RANGE:
        raise EstimateError(
            f"{where}: the estimated flatfield spans {span:.0f}× (more than {MAX_FLATFIELD_RANGE:g}×), "
            "which no illumination does; "
            "the images do not constrain it — use more frames, frames with more even content, or a smoother "
            "fit"
        )


#: share of the blocks where a floor-method darkfield may exceed the data's 1 % quantile (by more than 5 % of
#: the level)
MAX_DARKFIELD_ABOVE_DATA = 0.01


def check_darkfield_below_data(model: GridModel, Y: np.ndarray, V: np.ndarray, where: str) -> None:
    """The floor method's darkfield is a polynomial, not bounded by the data during the fit: refuse it
    where it rises above the darkest 1 % of the images (beyond three times the floor's noise) at more
    than :data:`MAX_DARKFIELD_ABOVE_DATA` of the blocks — the corrected images would be negative there."""
    S, D = model.fields()
    darkest = np.quantile(np.where(V > 0, Y, np.nan), 0.01, axis=0, method="lower")
    level = float(np.median(Y[V > 0]))
    above = np.isfinite(darkest) & (D > darkest + 0.05 * level)
    if above.mean() > MAX_DARKFIELD_ABOVE_DATA:
        raise EstimateError(
            f"{where}: the estimated darkfield rises above the darkest 1 % of the images on "
            f"{above.mean():.0%} of the field, "
            "which no darkfield can; the images do not determine it — give the camera offset "
            "(--camera-offset), raise --darkfield-degree, or try --method surface"
        )


def _surface_fields(
    model: surface_fit.GridModel, shape: tuple[int, int], known
) -> tuple[np.ndarray, np.ndarray, float]:
    """The surface model's S (mean 1) and D at every pixel, and the factor by which S was rescaled."""
    flat = np.exp(full_resolution(model.log_flat, model.layout))
    scale = float(flat.mean())
    flat /= scale
    if model.settings.darkfield:
        dark = full_resolution(model.dark, model.layout)
    elif known is not None:
        dark = np.broadcast_to(np.asarray(known, np.float64), shape).copy()
    else:
        dark = np.zeros(shape)
    return flat.astype(np.float32), dark.astype(np.float32), scale


def _known_on_grid(known, layout: GridLayout, where: str) -> np.ndarray | None:
    if known is None:
        return None
    value = np.asarray(known, np.float64)
    if value.ndim == 0:
        if not math.isfinite(float(value)):
            raise EstimateError(f"{where}: the known darkfield {float(value)} is not finite")
        return np.full(layout.size, float(value))
    if value.shape != layout.shape:
        raise EstimateError(
            f"{where}: known darkfield of shape {value.shape} does not match the images ({layout.shape[0]}, "
            f"{layout.shape[1]})"
        )
    if not np.isfinite(value).all():
        raise EstimateError(f"{where}: the known darkfield holds non-finite values")
    means, _ = block_means(value[None], layout)
    return means[0]


def _check_content(Y: np.ndarray, V: np.ndarray, where: str) -> None:
    valid = V > 0
    if not valid.any():
        raise ContentError(
            f"{where}: every block of every image is masked or saturated; nothing to estimate from"
        )
    values = Y[valid]
    low, high = float(values.min()), float(values.max())
    if high == low:
        what = "all zero" if high == 0 else f"constant (every value {high:g})"
        raise ContentError(f"{where}: the stack is {what}; a flatfield cannot be estimated from it")


def _final_model(model: GridModel, stats: np.ndarray) -> GridModel:
    """The least squares over every frame's sufficient statistics, with the gauge fixed again."""
    P = model.basis()
    d_terms, _ = basis_terms(model.settings)
    PD = P[:, d_terms]
    if stats[0].sum() <= 0:
        return model
    s_coef, d_fit = solve_statistics(stats, P, PD, model.settings.darkfield)
    S = P @ s_coef
    mean = S.mean()
    if not (mean > 0):
        return model
    s_coef = s_coef / mean
    model.s_coef = s_coef
    if model.settings.darkfield:
        D = PD @ d_fit
        c = least_curvature_gauge(S / mean, D, model.layout)
        d_coef = np.zeros(P.shape[1])
        d_coef[d_terms] = d_fit
        model.d_coef = d_coef + c * s_coef
    return model


def _full_fields(model: GridModel, shape: tuple[int, int], known) -> tuple[np.ndarray, np.ndarray, float]:
    degree = model.settings.degree
    flat = evaluate_field(model.s_coef, degree, shape)
    scale = float(flat.mean())
    flat /= scale
    if model.settings.darkfield:
        dark = evaluate_field(model.d_coef, degree, shape)
    elif known is not None:
        dark = np.broadcast_to(np.asarray(known, np.float64), shape).copy()
    else:
        dark = np.zeros(shape)
    if not np.all(flat > 0):
        raise EstimateError(
            f"the estimated flatfield reaches {flat.min():.3g} (not positive); the images do not constrain "
            "it (too few frames with background?)"
        )
    return flat.astype(np.float32), dark.astype(np.float32), scale


def settings_record(settings: EstimateSettings) -> dict[str, Any]:
    """The settings as recorded in outputs."""
    return asdict(settings)
