"""The surface method's robust fit of I = S·B + D on block means (``--method surface``).

Notation: Y[n, g] is the mean of block g in frame n, V[n, g] its validity, S the flatfield (mean 1,
kept as f = log S so that it is positive by construction), D the darkfield and B[n] the frame's
*baseline* — its background level at unit flatfield.

Method. S and D are free values per block, smooth under a thin-plate penalty (``core.estimate.surfaces``);
their smoothing length ℓ is chosen from the frames themselves by cross-validation: the frames are split
into two contiguous halves, the model is fitted on one half and scored on how it predicts the other
(weighted squared error of the floor), for ℓ from 0.35 to 23 blocks. The specimen, saturated blocks and
outlier frames get no weight through Tukey's biweight on the relative residual
x = (Y − S·B − D)/(S·B + D), with a noise scale τ per block (the floor's noise, measured on the side
specimen never reaches, raised in dim blocks as shot noise is) and a window that widens where the data lie
below the model (2 × the block's 10 % residual quantile): specimen never darkens the floor, so such a block is
one the model misses (a sharp edge, a poor start), and it is not locked out.

Steps (:func:`fit_grid`):

1. *Start.* Per block, the 2 % quantile over frames (the same quantile of a position-independent
   scene everywhere, so ∝ S·B + D); per frame the 2 % quantile over blocks of Y/S (B). No dark
   background is assumed: on a brightfield or confluent stack the quantile is simply a dim level of
   the specimen.
2. *Iterate* (IRLS) on a coarse grid when the stack is large (2 × 2 coarsening until frames × blocks is
   below :data:`COARSE_WORK`), then on the working grid: weights, one Gauss–Newton step for (f, D) with
   B fixed — per-block sufficient statistics Σω, ΣωB, ΣωB², Σωr, ΣωBr, Σωr², so a solve costs the same
   whatever the number of frames — then B per frame by weighted least squares. ℓ is chosen at the
   first iterations of each grid.
3. *Outlier frames.* A frame whose floor residuals scatter more than 3× the median frame's (stray
   light, another channel, a moved stage) is dropped.

**The darkfield's gauge.** S·B + D is unchanged by B → B − c, D → D + c·S: images alone cannot tell a
darkfield shaped like the flatfield from light. After every step c is chosen so that D has the least
roughness (the same thin-plate measure), then clamped so that D stays at or below the data (the 1 %
quantile of every block over the frames) and, for unsigned integer images, at or above zero. So the
darkfield is below what the data allow by construction, and the flatfield, which the gauge does not
touch, is positive by construction.

**Where B hardly varies** (no drift, no bleaching: below :data:`SORT_BELOW_SPREAD`), the floor alone
cannot separate S from D. The fit then uses the *order statistics* of each block instead of the frames: the
k-th smallest value of every block, I_(k) = S·q_k + D, spreads over the whole range of the specimen, so S is
identified by the specimen's own variation (the idea of CIDRE, Smith et al. 2015, and BaSiC's
``sort_intensity``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

# the floor method's, shared
from .floor_fit import biweight, low_quantile
from .grid import EstimateError, GridLayout, coarsen, regrid
from .surfaces import SurfaceGrid

#: quantile of the start, over frames per block and over blocks per frame
START_QUANTILE = 0.02
#: frames whose floor residuals scatter more than this many times the median frame's are outliers
OUTLIER_SCATTER = 3.0
#: relative spread of the baselines below which the darkfield is fitted on order statistics
SORT_BELOW_SPREAD = 0.02
#: relative spread of the baselines below which the darkfield is reported as resting on the prior
MIN_BASELINE_SPREAD = 0.01
#: frames × blocks above which the first iterations run on a 2 × 2 coarser grid
COARSE_WORK = 1_500_000
#: smoothing lengths (blocks of the grid) the cross-validation chooses from
SMOOTHNESS_CHOICES = (0.35, 0.7, 1.4, 2.8, 5.6, 11.0, 23.0)
#: the surface fit's own advice (the floor's suggests this method)
SURFACE_NOT_CONVERGED_ADVICE = "; the flatfield may be off by several percent — check it, or fit more frames"
#: relative CV score within which the smoother surface is preferred
CV_TOLERANCE = 0.002
#: the window widens to this many times the block's 10 % residual quantile where that lies below the model:
#: specimen never darkens the floor, so data below it mean the model misses there (a sharp edge, a poor start)
WIDEN = 2.0


@dataclass(frozen=True)
class FitSettings:
    darkfield: bool = False
    smoothness: float | None = None  # ℓ in blocks of the working grid; None: cross-validated
    darkfield_ratio: float = 4.0  # the darkfield's smoothing length in units of the flatfield's
    window: float = 3.0  # biweight half-width in units of the block's noise τ
    max_iterations: int = 40
    tolerance: float = 1e-4
    order_statistics: bool | None = None  # None: when the baselines vary by less than SORT_BELOW_SPREAD
    # images without negative values: a darkfield below zero is impossible
    nonnegative_darkfield: bool = False
    quantisation: float = 0.0  # rounding noise of the data (counts RMS), a floor under τ


@dataclass
class GridModel:
    """A fitted model on one grid: log S (mean of S is 1), D, the noise scale and window per block."""

    layout: GridLayout
    settings: FitSettings
    log_flat: np.ndarray
    dark: np.ndarray
    tau: np.ndarray
    widths: np.ndarray  # biweight half-widths per block (relative units)
    smoothness: float
    upper: np.ndarray  # what the data allow the darkfield to reach, per block
    lower: float  # the darkfield's floor (zero for images without negative values)
    frame_scatter_limit: float = float("inf")
    known_darkfield: np.ndarray | None = None  # (G,) on the grid, subtracted and not fitted
    iterations: int = 0
    converged: bool = False
    frames_used: int = 0
    rejected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_spread: float = float("nan")
    order_statistics: bool = False
    change: float = float("nan")

    def fields(self) -> tuple[np.ndarray, np.ndarray]:
        """S and D on the grid (G,)."""
        return np.exp(self.log_flat), self.dark


@dataclass
class _State:
    f: np.ndarray
    D: np.ndarray
    B: np.ndarray
    rejected: np.ndarray
    smoothness: float
    tau: np.ndarray | None = None
    widths: np.ndarray | None = None
    iterations: int = 0
    change: float = float("inf")
    scatter_limit: float = float("inf")


def block_statistics(w: np.ndarray, B: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(6, G): Σw, ΣwB, ΣwB², Σwr, ΣwBr, Σwr² over frames — all a Gauss–Newton step and its
    cross-validation score need, mergeable by addition (chunks, folds)."""
    wB = w * B[:, None]
    return np.stack(
        [w.sum(0), wB.sum(0), (wB * B[:, None]).sum(0), (w * r).sum(0), (wB * r).sum(0), (w * r * r).sum(0)]
    )


def gauss_newton_step(
    grid: SurfaceGrid,
    stats: np.ndarray,
    S: np.ndarray,
    f: np.ndarray,
    D: np.ndarray,
    smoothness: float,
    settings: FitSettings,
    tolerance: float = 1e-4,
) -> tuple[np.ndarray, np.ndarray]:
    """The change (Δf, ΔD) that minimises the weighted squared residual of the linearised model
    Y ≈ S·B·(1 + Δf) + D + ΔD plus the roughness of f + Δf and D + ΔD (smoothing lengths ℓ and
    ``darkfield_ratio``·ℓ blocks)."""
    s0, s1, s2, sr, sbr, _ = stats
    a11 = S * S * s2
    lam1 = smoothness**4 * max(float(a11.mean()), 1e-300)
    r1 = S * sbr - lam1 * grid.roughness(f)
    if not settings.darkfield:
        df, _ = grid.solve_one(a11, r1, lam1, tolerance)
        return df, np.zeros_like(df)
    lam2 = (smoothness * settings.darkfield_ratio) ** 4 * max(float(s0.mean()), 1e-300)
    df, dD, _ = grid.solve_two(a11, S * s1, s0, r1, sr - lam2 * grid.roughness(D), lam1, lam2, tolerance)
    return df, dD


def choose_smoothness(
    grid: SurfaceGrid,
    Y: np.ndarray,
    V: np.ndarray,
    omega: np.ndarray,
    B: np.ndarray,
    r: np.ndarray,
    S: np.ndarray,
    f: np.ndarray,
    D: np.ndarray,
    widths: np.ndarray,
    settings: FitSettings,
) -> tuple[float, list[float]]:
    """ℓ by two-fold cross-validation over contiguous halves of the frames (contiguous, so that a
    timelapse's slowly changing specimen is not mistaken for shading): the model is stepped with ℓ on
    one half, the other half's baselines are refitted under it, and its frames are scored by Tukey's
    robust loss — so the held-out frames' specimen, which no weight of the training fit has seen,
    counts against a surface that follows specimen."""
    half = Y.shape[0] // 2
    halves = (slice(0, half), slice(half, None))
    stats = [block_statistics(omega[h], B[h], r[h]) for h in halves]
    scores = []
    for smoothness in SMOOTHNESS_CHOICES:
        score = 0.0
        for train, test in ((0, 1), (1, 0)):
            df, dD = gauss_newton_step(grid, stats[train], S, f, D, smoothness, settings, tolerance=1e-3)
            f_new = f + np.clip(df, -1.0, 1.0)
            score += _robust_loss(
                Y[halves[test]], V[halves[test]], np.exp(f_new), D + dD, B[halves[test]], widths
            )
        scores.append(score)
    # the smoothest surface that predicts within CV_TOLERANCE of the best (a "one standard error" rule:
    # differences smaller than that are the halves' own noise)
    best = min(scores)
    chosen = max(s for s, score in zip(SMOOTHNESS_CHOICES, scores) if score <= best * (1 + CV_TOLERANCE))
    return chosen, scores


def _robust_loss(
    Y: np.ndarray,
    V: np.ndarray,
    S: np.ndarray,
    D: np.ndarray,
    B: np.ndarray,
    widths: np.ndarray,
    iterations: int = 2,
) -> float:
    """Σ Tukey ρ(x / width) over the valid blocks of frames whose baselines are refitted under (S, D)."""
    valid = V > 0
    for _ in range(iterations + 1):
        level = np.outer(B, S) + D
        ok = valid & (level > 0)
        u = np.where(ok, (Y - level) / np.where(ok, level, 1.0), np.inf) / widths
        w = biweight(np.where(np.isfinite(u), u, 2.0)) * ok
        B = _baselines(Y, S, D, w / np.where(ok, level, 1.0) ** 2, B)
    loss = 1.0 - np.minimum(u * u, 1.0)
    loss = 1.0 - loss * loss * loss  # Tukey's ρ, scaled to 1 outside the window
    return float(np.where(valid, loss, 0.0).sum())


def residual_quantile(x: np.ndarray, ok: np.ndarray, p: float = 0.1, max_frames: int = 64) -> np.ndarray:
    """Per block, the p-quantile (linear interpolation) of x over the frames where ``ok``, from at most
    ``max_frames`` evenly strided frames; 0 where a block has no valid frame. One sort of all blocks at
    once: a per-block loop (nanquantile) costs more than the whole rest of an iteration."""
    step = max(1, x.shape[0] // max_frames)
    valid = ok[::step]
    ordered = np.sort(np.where(valid, x[::step], np.inf), axis=0)
    count = valid.sum(axis=0)
    position = p * np.maximum(count - 1, 0)
    low = np.floor(position).astype(np.intp)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    a = np.take_along_axis(ordered, low[None], 0)[0]
    b = np.take_along_axis(ordered, high[None], 0)[0]
    with np.errstate(invalid="ignore"):
        q = a + (position - low) * (b - a)
    return np.where((count > 0) & np.isfinite(q), q, 0.0)


def _noise_scale(
    x: np.ndarray, ok: np.ndarray, level: np.ndarray, settings: FitSettings, block: int
) -> np.ndarray:
    """τ per block: the floor's relative noise τ₀ (1.4826 × the median of −x over negative residuals,
    the side specimen never reaches), raised where a block is dimmer than typical as shot noise is
    (τ ∝ level^−½, at most 5×), and never below the data's rounding."""
    step = max(1, x.shape[0] // 64)
    below = -x[::step][ok[::step] & (x[::step] < 0)]
    tau0 = 1.4826 * float(np.median(below)) if below.size else 0.01
    tau0 = tau0 if tau0 > 0 else 0.01
    typical = float(np.median(level[level > 0])) if (level > 0).any() else 1.0
    dimmer = np.sqrt(typical / np.maximum(level, typical / 25))
    tau = tau0 * np.clip(dimmer, 1.0, 5.0)
    return np.maximum(tau, settings.quantisation / block / np.maximum(level, 1e-12))


def _darkfield_gauge(
    grid: SurfaceGrid, S: np.ndarray, D: np.ndarray, upper: np.ndarray, lower: np.ndarray
) -> float:
    """c for D → D + c·S: the least roughness of D + c·S (its least slope where S has hardly any
    curvature, which leaves c unconditioned), clamped so that lower ≤ D + c·S ≤ upper everywhere."""
    PS = grid.roughness(S)
    curvature = float(S @ PS)
    slope_s, slope_d = np.gradient(S.reshape(grid.ny, grid.nx)), np.gradient(D.reshape(grid.ny, grid.nx))
    slope = float(sum((a * a).sum() for a in slope_s))
    if curvature > 1e-3 * slope / max(grid.ny, grid.nx) ** 2:
        c = -float(D @ PS) / curvature
    elif slope > 0:
        c = -float(sum((a * b).sum() for a, b in zip(slope_s, slope_d))) / slope
    else:
        c = 0.0
    high = float(np.min((upper - D) / S))
    low = float(np.max((lower - D) / S))
    # bounds that contradict each other mean D's shape is not yet right: leave its level alone this step
    return min(max(c, low), high) if low <= high else 0.0


def _iterate(
    Y: np.ndarray,
    V: np.ndarray,
    layout: GridLayout,
    state: _State,
    settings: FitSettings,
    upper: np.ndarray,
    iterations: int,
    choose_at: tuple[int, ...],
    detect_outliers_at: int,
    fixed: np.ndarray,
) -> _State:
    """IRLS on one grid (module description, step 2)."""
    n, _ = Y.shape
    grid = SurfaceGrid(layout.ny, layout.nx)
    valid = V > 0
    lower = _lower_bound(Y, V, settings)
    step_limit = 0.25 * float(np.median(Y[valid])) if valid.any() else 1.0
    f, D, B, rejected, smoothness = state.f, state.D, state.B, state.rejected.copy(), state.smoothness
    S = np.exp(f)
    tau = widths = None
    change, it = float("inf"), 0
    scatter_limit = state.scatter_limit
    for it in range(iterations):
        live = B > 0
        level = np.outer(B, S)
        level += D
        ok = valid & (level > 0) & (live & ~rejected)[:, None]
        r = np.where(ok, Y - level, 0.0)
        x = r / np.where(ok, level, 1.0)
        if tau is None or it in (1, 3, 6):
            typical_level = S * float(np.median(B[live])) + D if live.any() else np.ones_like(S)
            tau = _noise_scale(x, ok, typical_level, settings, layout.block)
        if it % 2 == 0 or it < 4:
            low = residual_quantile(x, ok)
        anneal = max(1.0, 4.0 * 0.7**it)  # wide at first: the start is rough
        widths = np.maximum(settings.window * anneal * tau, WIDEN * np.maximum(-low, 0.0))
        w = biweight(x / widths) * V * ok
        omega = w / (tau * tau * np.where(ok, level, 1.0) ** 2)
        if it in choose_at and settings.smoothness is None:
            smoothness, _ = choose_smoothness(grid, Y, V, omega, B, r, S, f, D, widths, settings)
        # an inexact step is enough: the next iteration corrects it (inexact Gauss–Newton)
        df, dD = gauss_newton_step(
            grid, block_statistics(omega, B, r), S, f, D, smoothness, settings, tolerance=1e-3
        )
        f_old = f
        f = f + np.clip(df, -1.0, 1.0)  # a step never rescales a block by more than e
        # nor moves the darkfield by more than a quarter of the signal
        D = D + np.clip(dD, -step_limit, step_limit)
        mean = float(np.exp(f).mean())
        f = f - math.log(mean)
        S = np.exp(f)
        B = B * mean
        if settings.darkfield:
            c = _darkfield_gauge(grid, S, D - fixed, upper - fixed, lower - fixed)
            D = D + c * S
            B = B - c
        B = _baselines(Y, S, D, omega, B)
        change = float(np.sqrt(np.mean((f - f_old) ** 2)))
        if it == detect_outliers_at:
            scatter = _frame_scatter(x, w)
            known = np.isfinite(scatter)
            if known.any():
                # an outlier is rare: never more than a tenth of the frames (a stack of two kinds of frame is
                # not outliers)
                scatter_limit = max(
                    OUTLIER_SCATTER * float(np.median(scatter[known])),
                    float(np.quantile(scatter[known], 0.9)),
                )
                rejected |= known & (scatter > scatter_limit)
        if it > max(choose_at, default=0) and it > detect_outliers_at and change < settings.tolerance:
            break
    return _State(
        f, D, B, rejected, smoothness, tau, widths, state.iterations + it + 1, change, scatter_limit
    )


def _baselines(
    Y: np.ndarray, S: np.ndarray, D: np.ndarray, w: np.ndarray, previous: np.ndarray
) -> np.ndarray:
    """B per frame by weighted least squares over its floor blocks; frames without weight keep their value."""
    num = (w * (Y - D)) @ S
    den = w @ (S * S)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), previous)


def _frame_scatter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted RMS of each frame's floor residuals (NaN for frames without floor blocks)."""
    ws = w.sum(axis=1)
    ms = (w * x * x).sum(axis=1)
    return np.sqrt(np.divide(ms, ws, out=np.full(ws.shape, np.nan), where=ws > 0))


def _start(
    Y: np.ndarray, V: np.ndarray, layout: GridLayout, settings: FitSettings, fixed: np.ndarray
) -> _State:
    """Step 1 of the module description."""
    valid = V > 0
    X = np.where(valid, Y - fixed, np.inf)
    n = Y.shape[0]
    D = fixed.copy()
    if settings.darkfield:
        D = D + float(low_quantile(X.ravel(), 0.002, 0))  # the darkest data: every frame's B starts positive
        X = np.where(valid, Y - D, np.inf)
    q = low_quantile(X, START_QUANTILE, axis=0)
    good = np.isfinite(q) & (q > 0)
    if not good.any():
        raise EstimateError(
            "no block holds light above the darkfield in enough images; a flatfield cannot be estimated"
        )
    f = np.log(np.where(good, q, np.median(q[good])))
    grid = SurfaceGrid(layout.ny, layout.nx)
    f, _ = grid.solve_one(np.where(good, 1.0, 1e-6), np.where(good, f, 0.0), 1.0)  # ℓ = 1 block: keeps edges
    f = f - math.log(float(np.exp(f).mean()))
    B = low_quantile(X / np.exp(f), START_QUANTILE, axis=1)
    B = np.where(np.isfinite(B) & (B > 0), B, 0.0)
    if (B > 0).sum() < 2:
        raise EstimateError(
            f"only {(B > 0).sum()} of {n} images hold light above the darkfield; a flatfield cannot be "
            "estimated from them"
        )
    return _State(f, D, B, np.zeros(n, bool), 2.8 if settings.smoothness is None else settings.smoothness)


def _levels(
    Y: np.ndarray, V: np.ndarray, layout: GridLayout
) -> list[tuple[np.ndarray, np.ndarray, GridLayout]]:
    """The working grid and the coarser grids the first iterations run on (coarsest last)."""
    levels = [(Y, V, layout)]
    while Y.shape[0] * levels[-1][2].size > COARSE_WORK and min(levels[-1][2].ny, levels[-1][2].nx) >= 16:
        levels.append(coarsen(*levels[-1]))
    return levels


def _lower_bound(Y: np.ndarray, V: np.ndarray, settings: FitSettings) -> float:
    """The darkfield is never further below the darkest data than the median data lie above them
    (and, for images without negative values, never below zero)."""
    values = Y[V > 0]
    darkest, median = float(values.min()), float(np.median(values))
    bound = darkest - (median - darkest)
    return max(bound, 0.0) if settings.nonnegative_darkfield else bound


def _upper_bound(Y: np.ndarray, V: np.ndarray) -> np.ndarray:
    """What the data allow the darkfield to reach: each block's 1 % quantile over frames."""
    q = low_quantile(np.where(V > 0, Y, np.inf), 0.01, axis=0)
    return np.where(np.isfinite(q), q, np.inf)


def _fit_levels(
    Y: np.ndarray,
    V: np.ndarray,
    layout: GridLayout,
    settings: FitSettings,
    fixed: np.ndarray,
    state: _State | None,
    detect_outliers: bool,
) -> tuple[_State, GridLayout]:
    levels = _levels(Y, V, layout)
    fixed_levels = [fixed]
    for _, _, lay in levels[1:]:
        fixed_levels.append(
            regrid(fixed_levels[-1], levels[len(fixed_levels) - 1][2], lay)
            if fixed.any()
            else np.zeros(lay.size)
        )
    Yc, Vc, coarse = levels[-1]
    coarser = 2 ** (len(levels) - 1)  # blocks of the working grid per block of the coarsest
    if state is None:
        state = _start(Yc, Vc, coarse, settings, fixed_levels[-1])
        state.smoothness = state.smoothness / coarser
    elif state.f.size != coarse.size:
        state = replace(
            state,
            f=regrid(state.f, layout, coarse),
            D=regrid(state.D, layout, coarse),
            smoothness=state.smoothness / coarser,
        )
    previous = None
    for depth in range(len(levels) - 1, -1, -1):
        Yl, Vl, lay = levels[depth]
        if previous is not None:
            state = replace(
                state,
                f=regrid(state.f, previous, lay),
                D=regrid(state.D, previous, lay),
                smoothness=state.smoothness * 2,
            )
        first = depth == len(levels) - 1
        state = _iterate(
            Yl,
            Vl,
            lay,
            state,
            settings,
            _upper_bound(Yl, Vl),
            # the finer grids start close to the answer, but a sharp edge or a slow drift can need as many
            # steps
            settings.max_iterations,
            (0, 4) if first else (1,),
            8 if (first and detect_outliers) else -1,
            fixed_levels[depth],
        )
        previous = lay
    return state, layout


def fit_grid(
    Y: np.ndarray,
    V: np.ndarray,
    layout: GridLayout,
    settings: FitSettings,
    known_darkfield: np.ndarray | None = None,
) -> GridModel:
    """Fit S (and D) to block means ``Y`` (N, G) with validity ``V`` (module description)."""
    fixed = np.zeros(layout.size) if known_darkfield is None else np.asarray(known_darkfield, np.float64)
    state, _ = _fit_levels(Y, V, layout, settings, fixed, None, detect_outliers=True)
    spread = _baseline_spread(state.B, state.rejected, state.D)
    use_order = settings.darkfield and (
        settings.order_statistics if settings.order_statistics is not None else spread < SORT_BELOW_SPREAD
    )
    notes: list[str] = []
    if use_order:
        # the k-th smallest value of every block (invalid blocks last), from the frames the first fit kept
        keep = ~state.rejected
        key = np.where(V[keep] > 0, Y[keep], np.inf)
        order = np.argsort(key, axis=0, kind="stable")
        Ys, Vs = np.take_along_axis(Y[keep], order, 0), np.take_along_axis(V[keep], order, 0)
        start = replace(
            state,
            B=np.sort(np.where(keep, state.B, np.inf))[: int(keep.sum())],
            rejected=np.zeros(int(keep.sum()), bool),
        )
        sorted_state, _ = _fit_levels(Ys, Vs, layout, settings, fixed, start, detect_outliers=False)
        state = replace(
            state,
            f=sorted_state.f,
            D=sorted_state.D,
            smoothness=sorted_state.smoothness,
            tau=sorted_state.tau,
            widths=sorted_state.widths,
            iterations=state.iterations + sorted_state.iterations,
            change=sorted_state.change,
        )
        why = (
            f"the frames' background levels vary by only {spread:.1%} (RMS), so "
            if settings.order_statistics is None
            else ""
        )
        notes.append(
            f"{why}flatfield and darkfield were separated by each block's distribution over the frames "
            "(order statistics), "
            "which assumes the specimen is spread evenly over the field"
        )
    rejected = [int(i) for i in np.flatnonzero(state.rejected)]
    if rejected:
        notes.append(
            f"{len(rejected)} outlier frame(s) dropped (floor scatter > {OUTLIER_SCATTER:g}× the median "
            f"frame's): {rejected[:20]}{' …' if len(rejected) > 20 else ''}"
        )
    quiet = int(((state.B <= 0) & ~state.rejected).sum())
    if quiet:
        notes.append(f"{quiet} frame(s) with no light above the darkfield were not used")
    converged = state.change < 10 * settings.tolerance
    if not converged:
        notes.append(
            f"the fit stopped after {state.iterations} iterations still changing by {state.change:.1e} "
            f"(tolerance {settings.tolerance:g})" + SURFACE_NOT_CONVERGED_ADVICE
        )
    if settings.darkfield and not use_order and not spread >= MIN_BASELINE_SPREAD:
        notes.append(
            f"the frames' background levels vary by only {spread:.2%} (RMS): the darkfield is not "
            "identifiable from these images and rests on the "
            "least-roughness prior; give the camera offset if you know it (--camera-offset)"
        )
    used = int(((state.B > 0) & ~state.rejected).sum())
    return GridModel(
        layout,
        settings,
        state.f,
        state.D,
        state.tau,
        state.widths,
        state.smoothness,
        _upper_bound(Y, V),
        _lower_bound(Y, V, settings),
        state.scatter_limit,
        None if known_darkfield is None else fixed,
        state.iterations,
        converged,
        used,
        rejected,
        notes,
        spread,
        use_order,
        state.change,
    )


def _baseline_spread(B: np.ndarray, rejected: np.ndarray, D: np.ndarray) -> float:
    """RMS variation of the frames' levels relative to their mean level including the darkfield,
    std(B)/mean(B + D̄): unchanged by the gauge (B → B − c, D → D + c·S, S of mean 1)."""
    b = B[(B > 0) & ~rejected]
    level = float(np.mean(b) + np.mean(D)) if b.size else 0.0
    if b.size < 2 or level <= 0:
        return 0.0
    return float(np.std(b) / level)


def frame_weights(
    Y: np.ndarray, V: np.ndarray, model: GridModel, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baselines B, biweights w and least-squares weights ω of frames under a fitted model (the final
    pass, or frames the model was not fitted on)."""
    S, D = model.fields()
    X = np.where(V > 0, Y - D, np.inf)
    B = low_quantile(X / S, START_QUANTILE, axis=1)
    B = np.where(np.isfinite(B) & (B > 0), B, 0.0)
    w = omega = np.zeros_like(Y)
    for _ in range(iterations + 1):
        level = np.outer(B, S) + D
        ok = (V > 0) & (level > 0) & (B > 0)[:, None]
        x = np.where(ok, (Y - level) / np.where(ok, level, 1.0), 0.0)
        w = biweight(x / model.widths) * V * ok
        omega = w / (model.tau**2 * np.where(ok, level, 1.0) ** 2)
        B = _baselines(Y, S, D, omega, B)
    scatter = _frame_scatter(x, w)
    drop = (np.isfinite(scatter) & (scatter > model.frame_scatter_limit)) | (B <= 0) | (w.sum(axis=1) < 3)
    w[drop] = 0.0
    omega[drop] = 0.0
    return B, w, omega


def chunk_statistics(
    Y: np.ndarray, V: np.ndarray, model: GridModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-block sufficient statistics of one chunk of frames at the model (final pass), the chunk's
    baselines, and which frames contributed. Plain numpy: runs on a worker as it is."""
    B, w, omega = frame_weights(Y, V, model)
    S, D = model.fields()
    r = np.where(omega > 0, Y - np.outer(B, S) - D, 0.0)
    return block_statistics(omega, B, r), B, w.sum(axis=1) > 0


def final_step(model: GridModel, stats: np.ndarray) -> GridModel:
    """One Gauss–Newton step over every frame's statistics (when the fit saw a sample), gauge fixed again."""
    if model.order_statistics or stats[0].sum() <= 0:
        return model
    grid = SurfaceGrid(model.layout.ny, model.layout.nx)
    S, D = model.fields()
    df, dD = gauss_newton_step(
        grid, stats, S, model.log_flat, D, model.smoothness, model.settings, tolerance=1e-6
    )
    f = model.log_flat + np.clip(df, -1.0, 1.0)
    f = f - math.log(float(np.exp(f).mean()))
    if not model.settings.darkfield:
        return replace(model, log_flat=f)
    S, D = np.exp(f), D + dD
    fixed = model.known_darkfield if model.known_darkfield is not None else 0.0
    D = D + _darkfield_gauge(grid, S, D - fixed, model.upper - fixed, model.lower - fixed) * S
    return replace(model, log_flat=f, dark=D)
