"""The background subtracted before the flatfield division: estimated from a tile's quietest slices,
a value, a darkfield image, or none.

**Estimate** (``--background estimate``), per channel, pooling the z planes of every time point:

1. *Survey.* Per-slice statistics are computed on a small copy of the tile: the coarsest resolution
   level with at least :data:`SURVEY_MIN_YX` pixels across, read with a y/x stride so the survey
   holds at most :data:`SURVEY_MAX_SAMPLES` values. No smoothing across z (3-D pre-smoothing leaks
   tissue into the end slices).
2. *Candidates.* The ``max(min_slices, ⌈5 %·n⌉)`` slices with the smallest standard deviation
   (by rank, so a short stack still gets ``min_slices`` candidates instead of one).
3. *Rejection.* Repeatedly: μ = the per-pixel median of the kept slices, lightly smoothed (so it
   follows an uneven background but not the noise), σ = the noise of the kept slices (robust σ of
   neighbouring-pixel differences / √2, which structure cannot inflate); drop every slice with more
   than 1 % of its voxels above μ + 3σ. Stop when none is dropped. Slices with sample fail this
   test even when every slice has some (their texture is far above the noise).
4. *Fallback.* If every candidate is rejected, the candidates are used anyway — logged as a
   warning and recorded in the output's provenance. Fewer than ``min_slices`` slices in the tile is
   an error (say which other background to use), never a silent guess.
5. *Growth.* Every other slice that passes the same test against the final μ, σ joins, up to
   :data:`MAX_MEDIAN_PLANES` (the quietest first), so the background is averaged over as many
   background-only slices as the tile has.
6. The background is the per-pixel median of the selected slices at the corrected level's full
   resolution (survey slices are mapped to its planes through the physical z coordinates).

This is the slice selection of the ExASPIM pipeline with its known failure modes fixed (see
``reference/exaspim-flatfield.md`` §3 and §9): rank-based candidates, per-pixel μ with a noise σ
instead of one global mean and standard deviation, no z smoothing, and an explicit, recorded fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..io.omezarr import CANONICAL, TileError, to_canonical
from .graph import non_finite_voxels

SURVEY_MIN_YX = 128
SURVEY_MAX_SAMPLES = 2**24
MIN_SLICES = 3
MAX_MEDIAN_PLANES = 32
#: σ (survey pixels) of the smoothing of the per-pixel background level μ in the rejection
MU_SMOOTHING = 3.0


class BackgroundError(InputError):
    """A background that cannot be determined or used. The message names the tile and the remedy."""


@dataclass
class QuietSlices:
    """Which slices of a survey were judged background-only, and how."""

    indices: list[int]
    candidates: list[int]
    iterations: int
    mu: float  # median of the per-pixel background estimate
    sigma: float
    fallback: str | None = None
    notes: list[str] = field(default_factory=list)


def robust_sigma(values: np.ndarray) -> float:
    """1.4826 × the median absolute deviation (the standard deviation for Gaussian noise); the plain
    standard deviation when more than half the values are identical (MAD = 0, e.g. 8-bit data)."""
    values = np.asarray(values, np.float64).ravel()
    mad = float(np.median(np.abs(values - np.median(values))))
    return 1.4826 * mad if mad > 0 else float(values.std())


def noise_sigma(planes: np.ndarray) -> float:
    """The pixel noise σ of (n, h, w) planes: robust σ of differences of x-neighbours, divided by √2
    (smooth structure cancels in the differences; independent noise adds in quadrature)."""
    diffs = np.diff(np.asarray(planes, np.float32), axis=-1)
    return robust_sigma(diffs) / math.sqrt(2) if diffs.size else 0.0


def select_quiet_slices(
    survey: np.ndarray,
    min_slices: int = MIN_SLICES,
    candidate_fraction: float = 0.05,
    sigma_factor: float = 3.0,
    max_bright_fraction: float = 0.01,
    max_iterations: int = 100,
    max_slices: int = MAX_MEDIAN_PLANES,
) -> QuietSlices:
    """The background-only slices of a stack (steps 2–5 of the module description).

    Parameters
    ----------
    survey : ndarray
        (n, h, w) slices, any real dtype.
    min_slices : int
        Fewest slices to work with; fewer slices in ``survey`` is an error.

    Raises
    ------
    BackgroundError
        Fewer than ``min_slices`` slices.
    """
    n = survey.shape[0]
    if n < min_slices:
        raise BackgroundError(
            f"{n} slice{'s' if n != 1 else ''}; estimating a background needs at least {min_slices}"
        )
    survey3 = survey.reshape(n, survey.shape[-2] if survey.ndim > 2 else 1, -1).astype(np.float32, copy=False)
    planes = survey3.reshape(n, -1)
    stds = planes.std(axis=1)
    n_candidates = min(n, max(min_slices, math.ceil(candidate_fraction * n)))
    candidates = [int(i) for i in np.argsort(stds, kind="stable")[:n_candidates]]
    kept = list(candidates)
    notes: list[str] = []
    iterations = 0
    mu = sigma = 0.0

    def bright_fractions(keep: list[int], test: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        # μ: per-pixel median of the kept slices, smoothed so it follows the background's shape
        # (haze, vignetting) but not the noise of a few slices
        mu_map = ndi.gaussian_filter(np.median(survey3[keep], axis=0), MU_SMOOTHING, mode="nearest").reshape(
            -1
        )
        # σ: the noise, from differences of neighbouring pixels (structure cancels there, so a
        # slice with tissue cannot inflate it and pass as background)
        sigma_ = noise_sigma(survey3[keep])
        return (planes[test] > mu_map + sigma_factor * sigma_).mean(axis=1), mu_map, sigma_

    while kept and iterations < max_iterations:
        iterations += 1
        fractions, mu_map, sigma = bright_fractions(kept, np.array(kept))
        mu = float(np.median(mu_map))
        survivors = [i for i, f in zip(kept, fractions) if f <= max_bright_fraction]
        if len(survivors) == len(kept):
            break
        kept = survivors
    fallback = None
    if not kept:
        fallback = (
            f"every one of the {len(candidates)} candidate slices had more than "
            f"{max_bright_fraction:.0%} of its voxels above μ + {sigma_factor:g}σ; used the candidates anyway"
        )
        kept = list(candidates)
        _, mu_map, sigma = bright_fractions(kept, np.array(kept))
        mu = float(np.median(mu_map))
    else:
        # grow: every slice consistent with the final background joins (quietest first)
        fractions, mu_map, sigma = bright_fractions(kept, np.arange(n))
        quiet = [int(i) for i in np.argsort(stds, kind="stable") if fractions[i] <= max_bright_fraction]
        kept = sorted(set(kept) | set(quiet[: max(0, max_slices - len(kept))]))
        mu = float(np.median(mu_map))
        if len(kept) < min_slices:
            notes.append(
                f"only {len(kept)} slice{'s' if len(kept) != 1 else ''} passed the rejection (fewer than "
                f"{min_slices}); the background is noisier than usual"
            )
    kept = sorted(kept, key=lambda i: stds[i])[:max_slices]
    return QuietSlices(sorted(kept), sorted(candidates), iterations, mu, float(sigma), fallback, notes)


def map_planes(
    indices: list[int],
    source_scale: float,
    source_translation: float,
    target_scale: float,
    target_translation: float,
    n_target: int,
) -> list[int]:
    """Planes of a target level that overlap the given planes of a source level, by physical z.

    Plane i of a level with scale s and translation t is centred at ``t + i·s`` and spans half a
    plane either side (NGFF pixel centres).
    """
    out: set[int] = set()
    for i in indices:
        start = source_translation + (i - 0.5) * source_scale
        stop = source_translation + (i + 0.5) * source_scale
        lo = math.floor((start - target_translation) / target_scale - 0.5 + 1e-9) + 1
        hi = math.ceil((stop - target_translation) / target_scale + 0.5 - 1e-9) - 1
        out.update(range(max(lo, 0), min(hi, n_target - 1) + 1))
    return sorted(out)


@dataclass
class Background:
    """The background of a tile: float32 (C, Y, X) fields or (C, 1, 1) values, and how it was obtained."""

    fields: np.ndarray
    kind: str  # "estimate", "value", "darkfield", "none"
    summary: str  # one line for tables and logs
    details: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def constant_background(values: list[float], n_channels: int, kind: str = "value") -> Background:
    """One value for every channel, or one value per channel."""
    if len(values) not in (1, n_channels):
        raise BackgroundError(
            f"{len(values)} background values for {n_channels} channels; give one value or one per channel"
        )
    array = np.array(values * n_channels if len(values) == 1 else values, np.float32).reshape(
        n_channels, 1, 1
    )
    if kind == "none":
        return Background(array, "none", "none", {"kind": "none"})
    text = ", ".join(f"{v:g}" for v in values)
    return Background(
        array, "value", f"value {text}", {"kind": "value", "values": [float(v) for v in values]}
    )


def survey_level(image, level):
    """The level the background estimate surveys for ``level`` of ``image`` (step 1 of the module
    description)."""
    roles = image.roles
    return image.levels[_survey_level(image.levels, level.index, roles.index("z") if "z" in roles else None)]


def _survey_level(levels, level_index: int, z_axis: int | None) -> int:
    """The coarsest level (at or below the corrected one) still at least SURVEY_MIN_YX across and
    with at least min(n_z, 16) z planes, so the slice statistics keep their resolution in z."""
    n_z = levels[level_index].shape[z_axis] if z_axis is not None else 1
    chosen = level_index
    for lv in levels[level_index:]:
        if min(lv.shape[-2:]) >= SURVEY_MIN_YX and (z_axis is None or lv.shape[z_axis] >= min(n_z, 16)):
            chosen = lv.index
    return chosen


def estimate_background(image, level, compute, min_slices: int = MIN_SLICES) -> Background:
    """Per-channel background of ``image`` at ``level`` from its quietest slices (module description).

    ``compute`` runs Dask collections and returns their values (``dask.compute`` or a client's).
    Only the survey (strided, small) and the selected planes' chunks are read.
    """
    import dask.array as da

    roles = image.roles
    target5 = to_canonical(image.dask_array(level), roles)
    n_t, n_c, n_z, n_y, n_x = target5.shape
    if n_t * n_z < min_slices:
        raise BackgroundError(
            f"tile {image.url}: {n_t * n_z} slice{'s' if n_t * n_z != 1 else ''} (z planes × time points) "
            f"at level {level.path}; "
            f"--background estimate needs at least {min_slices} — use --background VALUE, --darkfield URL "
            "or --background none"
        )
    z_axis = roles.index("z") if "z" in roles else None
    survey_level = image.levels[_survey_level(image.levels, level.index, z_axis)]
    survey5 = to_canonical(image.dask_array(survey_level), roles)
    s_t, _, s_z, s_y, s_x = survey5.shape
    stride = max(1, math.ceil(math.sqrt(s_t * n_c * s_z * s_y * s_x / SURVEY_MAX_SAMPLES)))
    stride = min(stride, max(1, min(s_y, s_x) // 16))
    (survey,) = compute(survey5[:, :, :, ::stride, ::stride])
    survey = np.asarray(survey)
    _refuse_non_finite(image, survey_level, survey, stride)
    z_of = lambda lv: (lv.scale[z_axis], lv.translation[z_axis]) if z_axis is not None else (1.0, 0.0)  # noqa: E731
    (ss, st), (ts, tt) = z_of(survey_level), z_of(level)
    fields, per_channel, warnings = [], [], []
    plane_lists = []
    for c in range(n_c):
        planes = survey[:, c].reshape(s_t * s_z, *survey.shape[-2:])
        try:
            quiet = select_quiet_slices(planes, min_slices=min_slices)
        except BackgroundError as exc:
            raise BackgroundError(f"tile {image.url} channel {c}: {exc}") from None
        selected = []
        for t in range(s_t):
            zs = [i - t * s_z for i in quiet.indices if t * s_z <= i < (t + 1) * s_z]
            selected += [(t, z) for z in map_planes(zs, ss, st, ts, tt, n_z)]
        if len(selected) > MAX_MEDIAN_PLANES:  # the survey was coarser in z: keep an even subset
            selected = [
                selected[i] for i in np.linspace(0, len(selected) - 1, MAX_MEDIAN_PLANES).round().astype(int)
            ]
        plane_lists.append(selected)
        if quiet.fallback:
            warnings.append(
                f"tile {image.url} channel {c}: background slice rejection fell back: {quiet.fallback}"
            )
        warnings += [f"tile {image.url} channel {c}: {note}" for note in quiet.notes]
        per_channel.append(
            {
                "channel": c,
                "planes": [[t, z] for t, z in selected] if n_t > 1 else [z for _, z in selected],
                "candidates": quiet.candidates,
                "survey_slices_kept": quiet.indices,
                "iterations": quiet.iterations,
                "sigma": round(quiet.sigma, 4),
                "fallback": quiet.fallback,
            }
        )
    medians = []
    for c, selected in enumerate(plane_lists):
        stacks = []
        for t in sorted({t for t, _ in selected}):
            zs = sorted(z for tt_, z in selected if tt_ == t)
            stacks.append(target5[t, c][zs])  # one read per chunk holding any of these planes
        stack = da.concatenate(stacks, axis=0) if len(stacks) > 1 else stacks[0]
        stack = stack.rechunk({0: -1})
        medians.append(da.map_blocks(_plane_median, stack, drop_axis=0, dtype=np.float32))
    results = compute(*medians)
    fields = np.stack([np.asarray(r, np.float32) for r in results])
    for c, (f, selected) in enumerate(zip(fields, plane_lists)):
        if not np.isfinite(f).all():  # a NaN the strided survey stepped over
            planes = ", ".join(f"t={t} z={z}" if n_t > 1 else f"z={z}" for t, z in selected[:5])
            raise TileError(
                f"tile {image.url} channel {c}: non-finite values (NaN or ±inf) in the background planes at "
                f"level {level.path} ({planes}{', …' if len(selected) > 5 else ''}); "
                "non-finite voxels cannot be corrected — fix or replace them in the input"
            )
    for entry, f in zip(per_channel, fields):
        entry["median"] = round(float(np.median(f)), 3)
    summary = "estimate " + ", ".join(f"{e['median']:g}" for e in per_channel)
    details = {
        "kind": "estimate",
        "survey_level": survey_level.path,
        "survey_stride": stride,
        "method": "per-pixel median of the quietest slices (rank candidates, per-pixel μ, noise σ, 3σ / 1% "
        "rejection)",
        "channels": per_channel,
    }
    return Background(fields, "estimate", summary, details, warnings)


def _refuse_non_finite(image, level, survey: np.ndarray, stride: int) -> None:
    """A NaN or ±inf in the survey would make the background NaN and every corrected voxel with it:
    refuse, naming where (in the tile's own axes and the survey level's coordinates)."""

    bad = non_finite_voxels(survey)
    if bad is None:
        return
    t, c, z, y, x = (int(v) for v in bad[0])
    at = dict(zip(CANONICAL, (t, c, z, y * stride, x * stride)))
    where = ", ".join(f"{name}={at[role]}" for name, role in zip(image.axis_names, image.roles))
    raise TileError(
        f"tile {image.url}: non-finite values (NaN or ±inf) at level {level.path}, the first at {where} "
        f"({len(bad)} of the {survey.size} voxels surveyed); non-finite voxels cannot be corrected — fix or "
        "replace them in the input"
    )


def _plane_median(block: np.ndarray) -> np.ndarray:
    # on the stored dtype: no float copy of the planes (the median of integers is exact in float32)
    return np.median(block, axis=0).astype(np.float32)
