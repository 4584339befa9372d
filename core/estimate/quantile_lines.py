"""The ``lines`` method: flatfield and darkfield from per-block quantile lines, no dark background assumed.

If the content is spatially stationary over the frames (fields or frames at varied positions: every
block sees the same mix of specimen, background and per-frame drift), the quantile over frames at level
p of block x is

    q_p(x) = S(x)·Q_p + D(x)

for every p, Q_p being the same for every block. So across levels p each block's quantiles lie on a
line against their spatial mean m_p, whose slope is S(x) (mean 1). Slopes are noisy (the levels span
little of the signal); the mean of the levels, α(x) = L·S(x) + D(x), is precise. With D smooth (a
camera offset, ramp or amplifier glow: a Legendre polynomial of degree k), the slopes are projected on
the span of α and the polynomials — the fitted values are S, the polynomial part gives D up to the
gauge D → D + c·S, which images alone cannot fix. Nothing assumes a dark background, and a sharp
aperture edge is kept because it is carried by α.

Choices made from the frames themselves: each level's weight is its precision (the inverse of the
variance between the quantile images of alternate halves of the frames: a level at the edge between
background and sparse bright cells is noisy), the smoothing of α and the degree of D minimise the
disagreement between a fit on one half of the frames and the other half (two-fold cross-validation).
The gauge takes the least-curved darkfield, capped so that D stays below the data's darkest 1 % at
every block; a flatfield that would need a darkfield above the data there is refused.

Weaknesses, measured on the randomised sweep (BENCHMARKS.md): with a dark background the floor method
is far more accurate (sparse scenes), and few frames of a coarse specimen leave α noisy. A fixed field
(a timelapse of one position) is not stationary: the fit is refused when fits on the first and second
half of the frames disagree by much more than fits on alternate frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .grid import EstimateError, GridLayout, basis_matrix, coarsen

#: quantile levels over frames (outlier frames — ≤ 5 % on the sweep — stay outside)
LEVELS = np.linspace(0.1, 0.9, 9)
#: candidate smoothing lengths of α, in blocks (Gaussian σ)
SMOOTHING = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
#: smooth α with an edge-preserving filter
EDGE_PRESERVING = True
#: candidate degrees of the darkfield's polynomial
DEGREES = (0, 1, 2, 3, 4, 6)
#: the slopes' grid: the fine grid's blocks coarsened this many times by 2×2 …
SLOPE_COARSENING = 2
#: … while at least this many blocks remain along each side
MIN_SLOPE_BLOCKS = 12
#: the first and second halves of the frames may disagree by this many times alternate halves
STATIONARY_RATIO = 3.0
#: … and by at least this much (%), before the content is called non-stationary
STATIONARY_FLOOR = 1.0


@dataclass
class LinesFit:
    """Flatfield (mean 1) and darkfield on the grid, with what was chosen."""

    flat: np.ndarray
    dark: np.ndarray
    layout: GridLayout
    diagnostics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def level_images(Y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """(K, G) quantiles over frames at :data:`LEVELS`; a saturated block sorts on top (it is at least that
    bright)."""
    Z = np.sort(np.ascontiguousarray(np.where(V > 0, Y, np.inf).T), axis=1)  # (G, N): one sort per block
    position = LEVELS * (Z.shape[1] - 1)
    lo = np.floor(position).astype(int)
    hi = np.minimum(lo + 1, Z.shape[1] - 1)
    f = position - lo
    with np.errstate(invalid="ignore"):  # inf · 0 where both neighbours are saturated
        q = Z[:, lo] * (1 - f) + Z[:, hi] * f
    return np.where(np.isnan(q), np.inf, q).T


def level_weights(Y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Each level's precision: 1 / the mean squared difference of its quantile images on alternate frames."""
    a, b = level_images(Y[0::2], V[0::2]), level_images(Y[1::2], V[1::2])
    ok = np.isfinite(a) & np.isfinite(b)
    difference = np.where(ok, a, 0.0) - np.where(ok, b, 0.0)  # no ∞ − ∞ at saturated blocks
    variance = (difference**2).sum(axis=1) / np.maximum(ok.sum(axis=1), 1)
    weights = np.where(ok.mean(axis=1) > 0.99, 1 / np.maximum(variance, 1e-30), 0.0)
    if not weights.any():
        raise EstimateError(
            "every quantile level is saturated at some block; the lines need unsaturated levels"
        )
    return weights / weights.sum()


def lines(Y: np.ndarray, V: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """α (the weighted mean level) and the slope of every block's line, both (G,). A block saturated at a
    used level (≤ 1 % of blocks, :func:`level_weights`) has no line of its own: it takes its neighbours'."""
    q = level_images(Y, V)
    use = weights > 0
    q, w = q[use], weights[use][:, None]
    whole = np.isfinite(q).all(axis=0)
    if not whole.any():
        raise EstimateError(
            "every block is saturated at some quantile level; the lines need unsaturated ones"
        )
    m = q[:, whole].mean(axis=1, keepdims=True)
    centred = m - (w * m).sum()
    spread = float((w * centred**2).sum())
    if not spread > 0:
        raise EstimateError("the frames' quantile levels do not differ; the lines have no slope")
    q = np.where(whole, q, 0.0)
    alpha = (w * q).sum(axis=0)
    slope = (w * (q - alpha) * centred).sum(axis=0) / spread
    return _fill(alpha, whole), _fill(slope, whole)


def _fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Unknown entries take the value of the nearest known one (block order is row-major; a saturated
    block is rare and isolated, so the nearest in index is a neighbour in the row or the one above)."""
    if known.all():
        return values
    index = np.flatnonzero(known)
    nearest = index[np.clip(np.searchsorted(index, np.arange(values.size)), 0, index.size - 1)]
    return np.where(known, values, values[nearest])


def smooth(values: np.ndarray, layout: GridLayout, sigma: float, noise: float = 0.0) -> np.ndarray:
    """Gaussian smoothing of σ blocks; with ``noise`` (the relative noise of a block), edge-preserving: a
    neighbour whose log differs by much more than the noise (an aperture edge) hardly counts (a bilateral
    filter on log values, range 3 × noise)."""
    grid = values.reshape(layout.ny, layout.nx)
    if sigma <= 0:
        return grid.ravel().copy()
    if not noise > 0 or not (grid > 0).all():
        return ndimage.gaussian_filter(grid, sigma, mode="nearest").ravel()
    logs = np.log(grid)
    radius = max(1, int(np.ceil(2 * sigma)))
    padded = np.pad(logs, radius, mode="edge")
    total = np.zeros_like(logs)
    weight = np.zeros_like(logs)
    scale = -0.5 / (3 * noise) ** 2
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            spatial = (dy * dy + dx * dx) / (2 * sigma * sigma)
            if spatial > 2.0:  # beyond 2σ
                continue
            shifted = padded[radius + dy : radius + dy + layout.ny, radius + dx : radius + dx + layout.nx]
            w = np.exp(scale * (shifted - logs) ** 2 - spatial)
            total += w * shifted
            weight += w
    return np.exp(total / weight).ravel()


def relative_noise(a: np.ndarray, b: np.ndarray) -> float:
    """A block's relative noise in the full stack's α, from the halves' α: std(log a − log b) / 2."""
    if not ((a > 0).all() and (b > 0).all()):
        return 0.0
    return float(np.std(np.log(a) - np.log(b))) / 2


def choose_smoothing(a: np.ndarray, b: np.ndarray, layout: GridLayout, noise: float = 0.0) -> float:
    """The σ whose smoothing of one half's α best predicts the other's (both scaled to mean 1); a half's
    noise is √2 × the full stack's."""
    a, b = a / a.mean(), b / b.mean()
    half = noise * np.sqrt(2)
    scores = [
        np.mean((smooth(a, layout, s, half) - b) ** 2) + np.mean((smooth(b, layout, s, half) - a) ** 2)
        for s in SMOOTHING
    ]
    return SMOOTHING[int(np.argmin(scores))]


def _project(alpha: np.ndarray, slope: np.ndarray, P: np.ndarray) -> np.ndarray:
    coefficients, *_ = np.linalg.lstsq(np.column_stack([alpha, P]), slope, rcond=1e-10)
    return coefficients


def choose_degree(halves: list[tuple[np.ndarray, np.ndarray]], layout: GridLayout) -> int:
    """The darkfield degree whose projection fitted on one half best predicts the other half's slopes."""
    cy, cx = layout.centres()
    scores = []
    for k in DEGREES:
        P = basis_matrix(cy, cx, k)
        score = 0.0
        for (fa, sa), (fb, sb) in (halves, halves[::-1]):
            c = _project(fa, sa, P)
            score += float(np.mean((np.column_stack([fb, P]) @ c - sb) ** 2))
        scores.append(score)
    return DEGREES[int(np.argmin(scores))]


def _curvature(values: np.ndarray, layout: GridLayout) -> np.ndarray:
    return ndimage.laplace(values.reshape(layout.ny, layout.nx), mode="nearest")[1:-1, 1:-1].ravel()


def _flat_spread(a: np.ndarray, b: np.ndarray) -> float:
    """½ RMS of the log ratio of two positive flatfields, in % (``core.estimate.holdout``'s measure)."""
    if not ((a > 0).all() and (b > 0).all()):
        return float("inf")
    d = np.log(a) - np.log(b)
    return 100 * float(np.sqrt(np.mean((d - d.mean()) ** 2))) / 2


def slope_grid(Y: np.ndarray, V: np.ndarray, layout: GridLayout) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """The block means on the coarser grid of the slopes: noise widens each block's spread of levels, the
    more so where the flatfield is bright, which biases a fine block's slope; 4× larger blocks cut that
    bias 16-fold, and a smooth darkfield needs few blocks."""
    for _ in range(SLOPE_COARSENING):
        if min(layout.ny, layout.nx) < 2 * MIN_SLOPE_BLOCKS:
            break
        Y, V, layout = coarsen(Y, V, layout)
    return Y, V, layout


def _shading(fine, coarse, degree: int, darkfield: bool, known) -> np.ndarray:
    """S (mean 1, not yet checked positive) from the smoothed α of the fine grid and, with a darkfield, the
    projection of the coarse grid's slopes on [α, polynomials]: S ∝ u·α + P·d on any grid, since the
    levels' scale L cancels (module description)."""
    alpha = fine.alpha()
    if not darkfield:
        S = alpha - (0.0 if known is None else known)
        return S / S.mean()
    a, s = coarse.lines()
    c = _project(a, s, coarse.basis(degree))
    S = c[0] * alpha + fine.basis(degree) @ c[1:]
    return S / S.mean()


@dataclass
class _Grid:
    """Block means of some frames on one grid, with the levels' weights and the smoothing of α."""

    Y: np.ndarray
    V: np.ndarray
    layout: GridLayout
    weights: np.ndarray
    sigma: float = 0.0
    noise: float = 0.0
    _cache: dict = field(default_factory=dict, repr=False)

    def part(self, frames: slice) -> _Grid:
        return _Grid(self.Y[frames], self.V[frames], self.layout, self.weights, self.sigma, self.noise)

    def lines(self) -> tuple[np.ndarray, np.ndarray]:
        if "lines" not in self._cache:  # one sort of every block's values per set of frames
            self._cache["lines"] = lines(self.Y, self.V, self.weights)
        return self._cache["lines"]

    def alpha(self) -> np.ndarray:
        key = ("alpha", self.sigma, self.noise)
        if key not in self._cache:
            self._cache[key] = smooth(self.lines()[0], self.layout, self.sigma, self.noise)
        return self._cache[key]

    def basis(self, degree: int) -> np.ndarray:
        return basis_matrix(*self.layout.centres(), degree)


EVEN, ODD = slice(0, None, 2), slice(1, None, 2)


def fit_lines(
    Y: np.ndarray, V: np.ndarray, layout: GridLayout, darkfield: bool, known: np.ndarray | None = None
) -> LinesFit:
    """Quantile lines of the block means ``Y`` (N, G) with validity ``V`` (module description).

    Raises
    ------
    EstimateError
        The lines have no slope, the flatfield is not positive (no darkfield below the data fits them), or
        the content is not stationary over the frames.
    """
    fine = _Grid(Y, V, layout, level_weights(Y, V))
    even, odd = fine.part(EVEN), fine.part(ODD)
    halves = [even.lines()[0], odd.lines()[0]]
    fine.noise = relative_noise(halves[0], halves[1]) if EDGE_PRESERVING else 0.0
    fine.sigma = choose_smoothing(halves[0], halves[1], layout, fine.noise)
    Yc, Vc, coarse_layout = slope_grid(Y, V, layout)
    coarse = _Grid(Yc, Vc, coarse_layout, level_weights(Yc, Vc))
    coarse_halves = {"even": coarse.part(EVEN), "odd": coarse.part(ODD)}
    degree = choose_degree([c.lines() for c in coarse_halves.values()], coarse_layout) if darkfield else 0
    S = _shading(fine, coarse, degree, darkfield, known)
    # split-half spread, and the same between the first and the second half (a fixed field drifts apart)
    n = len(Y)
    even.sigma = odd.sigma = fine.sigma
    even.noise = odd.noise = fine.noise
    parts = {"even": (even, EVEN), "odd": (odd, ODD)}
    parts.update(
        {k: (fine.part(p), p) for k, p in (("early", slice(0, n // 2)), ("late", slice(n // 2, None)))}
    )
    flats = {
        k: _shading(f, coarse_halves[k] if k in coarse_halves else coarse.part(p), degree, darkfield, known)
        for k, (f, p) in parts.items()
    }
    spread = _flat_spread(flats["even"], flats["odd"])
    drift = _flat_spread(flats["early"], flats["late"])
    notes = []
    if drift > max(STATIONARY_RATIO * spread, STATIONARY_FLOOR):
        moving = (
            f"the content is not stationary over the frames: fits on the first and the second half of the "
            f"frames differ by {drift:.1f} % against {spread:.1f} % for alternate frames (a fixed field, a "
            "timelapse?)"
        )
        if darkfield:  # the slopes, and so the darkfield, need every block to see the same mix of content
            raise EstimateError(f"{moving}, which the quantile lines need to separate a darkfield")
        # flatfield only, S is the frames' robust mean level: still right where the content averages out
        notes.append(
            f"{moving}: specimen that stays in place is taken for shading — check the flatfield for "
            "structure, or fit frames from varied positions"
        )
    if not (np.isfinite(S).all() and (S > 0).all()):
        raise EstimateError(
            "the quantile lines give a flatfield that is not positive: no darkfield below the data explains "
            "them"
        )
    diagnostics: dict = {
        "smoothing_blocks": fine.sigma,
        "alpha_noise_pct": 100 * fine.noise,
        "slope_grid": f"{coarse_layout.ny}×{coarse_layout.nx}",
        "level_weights": [round(float(w), 4) for w in fine.weights],
    }
    if darkfield:
        # D = α − L·S for any L (the gauge D → D + c·S): the least-curved D, with L raised where needed so
        # that D stays below the darkest 1 % of the data at every block
        alpha = fine.alpha()
        cs, ca = _curvature(S, layout), _curvature(alpha, layout)
        L = float(ca @ cs) / float(cs @ cs) if float(cs @ cs) > 0 else 0.0
        darkest = np.quantile(np.where(V > 0, Y, np.inf), 0.01, axis=0, method="lower")
        L = max(L, float(np.max((alpha - np.minimum(darkest, alpha)) / S)))
        D = alpha - L * S
        diagnostics.update(darkfield_degree=degree, level_counts=L)
        # the level is the gauge's choice, not the images': on the randomised sweep the three darkfields
        # the lines answered were 208–494 counts off (99–5565 % of the signal), their flatfields 0.6–1.8 %
        notes.append(
            "the quantile lines fix the darkfield only up to a multiple of the flatfield: its level here is "
            "a convention (the least-curved darkfield below the data) and may be off by hundreds of counts; "
            "images corrected as (I − D)/S are still flat, offset by a constant — give the camera offset "
            "(--camera-offset) for a darkfield to subtract"
        )
    else:
        D = np.zeros_like(S) if known is None else np.asarray(known, np.float64)
    diagnostics.update(split_half_spread_pct=spread, early_late_spread_pct=drift)
    return LinesFit(S, D, layout, diagnostics, notes)
