"""The robust fit of I = S·B + D on block means: the "floor" regression.

Notation: Y[n, g] is the mean of block g in frame n, V[n, g] its validity, S the flatfield (mean 1),
D the darkfield and B[n] the frame's *baseline* — its background level at unit flatfield.

Why a floor. Fluorescence specimens add light, so in every frame the blocks that show no specimen
sit on a smooth floor S·B[n] + D, and the specimen only ever lies above it. The floor is what is
common to all frames; everything above it (tissue, cells, debris, saturated spots) is down-weighted
with Tukey's biweight on the relative residual x = (Y − S·B − D)/(S·B + D), whose scale τ is the
noise of floor blocks (estimated from the lower side of the residuals, which the specimen never
reaches). S and D are smooth: Legendre polynomials of total degree ``degree`` (S) and
``darkfield_degree`` (D).

Steps (:func:`fit_grid`):

1. *Start.* Alternate low quantiles (p = max(2 %, 2/N)) of Y/S over the blocks of each frame (B) and
   of Y/B over the frames of each block (S, then fitted by the basis): a multiplicative floor.
2. *Floor blocks.* Per frame, a quadratic trend of the relative residuals over its lowest blocks,
   fitted with asymmetric biweights, absorbs what the multiplicative start gets wrong (an
   unknown darkfield bends each frame's floor differently); blocks within the noise of that trend
   are the first floor blocks, and τ is measured there.
3. *Iterate* (IRLS): weights = biweight(x / (``window``·τ)) × V; frames with too few floor blocks
   (< 25 % of the median frame's) get no weight; S and D by weighted least squares with B fixed —
   sufficient statistics per block Σw, ΣwB, ΣwB², ΣwY, ΣwBY, so the solve is a (K_S + K_D)-square
   system whatever the number of frames; then B per frame by least squares given S and D.
4. *Outlier frames.* A frame whose floor residuals scatter more than 3× the median frame's (stray
   light, another channel, a moved stage) is dropped and the fit repeated.

**The darkfield's gauge.** S·B + D is unchanged by B → B − c, D → D + c·S for any c: images alone
cannot tell a darkfield that looks like the flatfield from light. After every solve, c is chosen so
that D has the least curvature (∫(∇²D)² minimal), i.e. a darkfield is assumed to be a plane plus
as little flatfield-shaped curvature as the data allow (camera offset, dark current, a tilt). With
a flat S the flattest D (least variance) is used instead. What the data do determine is the frame
to frame variation of the floor (B varies: lamp, exposure, bleaching); without it the darkfield is
reported as not identifiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .grid import EstimateError, GridLayout, basis_matrix, degree_pairs, laplacian

#: low quantile of the start (at least 2/N)
START_QUANTILE = 0.02
#: frames with fewer floor blocks than this share of the median frame's get no weight
MIN_FLOOR_SHARE = 0.25
#: said with a fit that did not converge (the sweep's largest errors come with it)
NOT_CONVERGED_ADVICE = (
    "; the flatfield may be off by several percent — check it, or fit more frames or with --method surface"
)
#: frames whose floor residuals scatter more than this many times the median frame's are outliers
OUTLIER_SCATTER = 3.0
#: relative spread of the baselines below which the darkfield is not identifiable
MIN_BASELINE_SPREAD = 0.01


@dataclass(frozen=True)
class FitSettings:
    darkfield: bool = False
    degree: int = 6
    darkfield_degree: int = 2
    window: float = 3.0
    max_iterations: int = 25
    tolerance: float = 1e-4


@dataclass
class GridModel:
    """A fitted model on one grid: coefficients of S (mean 1 on the grid) and D, and the noise scale τ."""

    layout: GridLayout
    settings: FitSettings
    s_coef: np.ndarray
    d_coef: np.ndarray  # zeros without darkfield; in the same basis as S
    tau: float
    frame_scatter_limit: float
    known_darkfield: np.ndarray | None = None  # (G,) on the grid, subtracted and not fitted
    iterations: int = 0
    converged: bool = False
    frames_used: int = 0
    rejected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline_spread: float = float("nan")

    def basis(self) -> np.ndarray:
        cy, cx = self.layout.centres()
        return basis_matrix(cy, cx, self.settings.degree)

    def fields(self) -> tuple[np.ndarray, np.ndarray]:
        """S and D on the grid (G,)."""
        P = self.basis()
        d = P @ self.d_coef
        if self.known_darkfield is not None:
            d = d + self.known_darkfield
        return P @ self.s_coef, d


def biweight(u: np.ndarray) -> np.ndarray:
    """Tukey's biweight (1 − u²)² for |u| < 1, else 0."""
    v = u * u
    np.subtract(1.0, v, out=v)
    np.maximum(v, 0.0, out=v)
    v *= v
    return v


def low_quantile(values: np.ndarray, p: float, axis: int) -> np.ndarray:
    """The k-th smallest along ``axis`` with k = ⌊p·n⌋ (a partition, not a sort)."""
    n = values.shape[axis]
    k = min(n - 1, int(p * n))
    return np.take(np.partition(values, k, axis=axis), k, axis=axis)


def lower_scale(x: np.ndarray, keep: np.ndarray) -> float:
    """1.4826 × the median of −x over kept negative residuals: the noise on the side specimen never
    reaches."""
    values = -x[(x < 0) & keep]
    if values.size == 0:
        return float("nan")
    values = values[:: max(1, values.size // 200_000)]  # a strided sample: the median needs no more
    return 1.4826 * float(np.median(values))


def basis_terms(settings: FitSettings) -> tuple[list[int], list[int]]:
    pairs = degree_pairs(settings.degree)
    darkfield = [t for t, (i, j) in enumerate(pairs) if i + j <= settings.darkfield_degree]
    trend = [t for t, (i, j) in enumerate(pairs) if i + j <= 2]
    return darkfield, trend


def fit_grid(
    Y: np.ndarray,
    V: np.ndarray,
    layout: GridLayout,
    settings: FitSettings,
    known_darkfield: np.ndarray | None = None,
) -> GridModel:
    """Fit S (and D) to block means ``Y`` (N, G) with validity ``V`` (module description)."""
    n_frames, _ = Y.shape
    P = basis_matrix(*layout.centres(), settings.degree)
    d_terms, trend_terms = basis_terms(settings)
    PD, Q = P[:, d_terms], P[:, trend_terms]
    fixed = np.zeros(Y.shape[1]) if known_darkfield is None else np.asarray(known_darkfield, np.float64)
    valid = V > 0
    notes: list[str] = []

    # 1. start: multiplicative low quantiles (invalid blocks never count as the floor)
    # (on every other block in y and x when the grid is large: a start needs no more)
    step = 2 if min(layout.ny, layout.nx) >= 32 else 1
    sub = (np.arange(layout.ny)[::step, None] * layout.nx + np.arange(layout.nx)[None, ::step]).ravel()
    X = np.where(valid[:, sub], Y[:, sub] - fixed[sub], np.inf)
    p = max(START_QUANTILE, 2.0 / n_frames)
    coef = None
    S_sub = np.ones(sub.size)
    live = np.ones(n_frames, bool)
    for _ in range(3):
        B = low_quantile(X / S_sub, p, axis=1)
        live = np.isfinite(B) & (B > 0)
        if live.sum() < 2:
            break
        q = low_quantile(X[live] / B[live, None], p, axis=0)
        coef = _robust_surface(P[sub], q)
        S_sub = P[sub] @ coef
        S_sub = S_sub / S_sub.mean()
    S = np.ones(Y.shape[1]) if coef is None else P @ coef
    S = S / S.mean()
    B = low_quantile(np.where(valid, Y - fixed, np.inf) / S, p, axis=1) if coef is not None else B
    live = np.isfinite(B) & (B > 0)
    if live.sum() < 2:
        raise _no_signal(live.sum(), n_frames)
    if not np.all(S > 0):
        S = np.clip(S, 0.05, None)  # a start only: the iterations below repair it
    quiet = int((~live).sum())
    if quiet:
        notes.append(f"{quiet} frame(s) with no light above the darkfield were not used")
    B = np.where(live, B, 0.0)
    D = fixed.copy()
    d_coef = np.zeros(P.shape[1])
    x, lvl_ok = _residuals(Y, S, B, D)
    usable = valid & lvl_ok & live[:, None]

    # 2. first floor blocks: per-frame quadratic trend over the lowest blocks
    xs = np.where(usable, x, np.inf)
    first = usable & (xs <= low_quantile(xs, 0.05, axis=1)[:, None])
    trend = _frame_trend(np.where(usable, x, 0.0), Q, first, lower_scale(x, first))
    tau = lower_scale(x - trend, usable)
    if not (tau > 0 and math.isfinite(tau)):
        raise _no_signal(int(live.sum()), n_frames)

    # 3.–4. IRLS, then outlier frames
    rejected: list[int] = []
    scatter_limit = float("inf")
    iterations, converged, change = 0, False, float("inf")
    for attempt in range(2):
        history: list[np.ndarray] = []
        for it in range(settings.max_iterations):
            r = x - trend if (attempt == 0 and it == 0) else x
            w = biweight(r / (settings.window * tau)) * V * usable
            support = w.sum(axis=1)
            threshold = MIN_FLOOR_SHARE * float(np.median(support[live])) if live.any() else 0.0
            w[support < threshold] = 0.0
            if rejected:
                w[rejected] = 0.0
            S_old, D_old = S, D
            s_coef, d_fit = _solve(Y - fixed, B, relative_weights(w, B, S, D), P, PD, settings.darkfield)
            S = P @ s_coef
            mean = S.mean()
            S, s_coef = S / mean, s_coef / mean
            if settings.darkfield:
                D_fit = PD @ d_fit
                c = least_curvature_gauge(S, D_fit, layout)
                d_coef = np.zeros(P.shape[1])
                d_coef[d_terms] = d_fit
                d_coef = d_coef + c * s_coef
            history.append(np.concatenate([s_coef, d_coef]))
            if len(history) >= 3 and it % 3 == 2:  # the fixed point is approached linearly: extrapolate
                theta = _extrapolate(history[-3:])
                s_coef, d_coef = theta[: P.shape[1]], theta[P.shape[1] :]
                history.append(theta)
            S = P @ s_coef
            D = fixed + P @ d_coef if settings.darkfield else D
            B = _baselines(Y, S, D, w, B)
            x, lvl_ok = _residuals(Y, S, B, D)
            usable = valid & lvl_ok & live[:, None]
            iterations += 1
            level = float(np.median(np.abs(S * np.median(B) + D)))
            change = max(_rms(S - S_old), _rms(D - D_old) / level if level > 0 else 0.0)
            if it > 0 and change < settings.tolerance:
                converged = True
                break
        scatter = _frame_scatter(x, w)
        known = np.isfinite(scatter)
        scatter_limit = OUTLIER_SCATTER * float(np.median(scatter[known])) if known.any() else float("inf")
        new = [int(i) for i in np.flatnonzero(known & (scatter > scatter_limit)) if int(i) not in rejected]
        if not new or attempt == 1:
            break
        rejected = sorted(rejected + new)
    if rejected:
        notes.append(
            f"{len(rejected)} outlier frame(s) dropped (floor scatter > {OUTLIER_SCATTER:g}× the median "
            f"frame's): {rejected[:20]}{' …' if len(rejected) > 20 else ''}"
        )
    # a last step of ≤ 10× the tolerance changes nothing that matters
    converged = converged or change <= 10 * settings.tolerance
    if not converged:
        notes.append(
            f"the fit stopped after {settings.max_iterations} iterations still changing by {change:.1e} "
            f"(tolerance {settings.tolerance:g})" + NOT_CONVERGED_ADVICE
        )
    w_final = biweight(x / (settings.window * tau)) * V * usable
    w_final[rejected] = 0.0
    spread = _baseline_spread(B, w_final)
    if settings.darkfield and not spread >= MIN_BASELINE_SPREAD:
        notes.append(
            f"the frames' background levels vary by only {spread:.2%} (RMS): the darkfield is not "
            "identifiable from these images and rests on the "
            "least-curvature prior; give the camera offset if you know it (--camera-offset)"
        )
    used = int((w_final.sum(axis=1) > 0).sum())
    return GridModel(
        layout,
        settings,
        s_coef,
        d_coef if settings.darkfield else np.zeros(P.shape[1]),
        tau,
        scatter_limit,
        None if known_darkfield is None else fixed,
        iterations,
        converged,
        used,
        rejected,
        notes,
        spread,
    )


def _robust_surface(P: np.ndarray, values: np.ndarray, iterations: int = 4) -> np.ndarray:
    """Coefficients of the basis fitted to per-block values with biweights on the relative residual: a
    block that is never background (a persistent artefact) must not bend the start."""
    ok = np.isfinite(values)
    v = np.where(ok, values, 0.0)
    typical = float(np.median(v[ok])) if ok.any() else 0.0
    # start without blocks far from the typical level (vignetting stays within a few-fold of it)
    w = (
        (ok & (v < 2.5 * typical) & (v > 0.2 * typical)).astype(np.float64)
        if typical > 0
        else ok.astype(np.float64)
    )
    coef = np.zeros(P.shape[1])
    for _ in range(iterations):
        coef = np.linalg.lstsq(P * w[:, None], v * w, rcond=None)[0]
        fit = P @ coef
        scale = np.abs(fit).mean() or 1.0
        r = (v - fit) / scale
        spread = 1.4826 * float(np.median(np.abs(r[ok]))) or 1e-6
        w = biweight(r / (4.685 * spread)) * ok
        w = np.sqrt(w)  # lstsq on √w-scaled rows is weighted least squares with weights w
    return coef


def _extrapolate(last: list[np.ndarray], max_step: float = 3.0) -> np.ndarray:
    """Aitken-style extrapolation of a linearly converging sequence θ_k → θ*: with r the ratio of the
    last two steps, θ* ≈ θ_k + Δ_k · r / (1 − r) (r < 0.95, the jump capped at ``max_step`` steps)."""
    d1, d2 = last[1] - last[0], last[2] - last[1]
    n1, n2 = float(np.linalg.norm(d1)), float(np.linalg.norm(d2))
    if n1 == 0 or n2 == 0:
        return last[2]
    r = n2 / n1
    if not 0.3 < r < 0.95 or float(d1 @ d2) <= 0:
        return last[2]
    return last[2] + d2 * min(r / (1 - r), max_step)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values * values)))


def _no_signal(live: int, total: int) -> ValueError:

    return EstimateError(
        f"only {live} of {total} images hold light above the darkfield; a flatfield cannot be estimated "
        "from them"
    )


def _residuals(Y: np.ndarray, S: np.ndarray, B: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative residuals (Y − S·B − D)/(S·B + D), and where the level is positive (elsewhere x = 0)."""
    lvl = np.multiply.outer(B, S)
    lvl += D
    ok = lvl > 0
    x = np.subtract(Y, lvl)
    np.divide(x, lvl, out=x, where=ok)
    x[~ok] = 0.0
    return x, ok


def _frame_trend(x: np.ndarray, Q: np.ndarray, w0: np.ndarray, tau: float, iterations: int = 3) -> np.ndarray:
    """Per frame, a smooth (quadratic) trend of the residuals x over its floor, with asymmetric biweights
    (3τ above, 6τ below: specimen lies above the floor)."""
    k = Q.shape[1]
    outer = (Q[:, :, None] * Q[:, None, :]).reshape(Q.shape[0], k * k)
    w = w0.astype(np.float64)
    tau = tau if tau > 0 and math.isfinite(tau) else 0.05
    trend = np.zeros_like(x)
    for _ in range(iterations):
        A = (w @ outer).reshape(-1, k, k)
        A += np.eye(k) * (1e-9 * np.trace(A, axis1=1, axis2=2)[:, None, None] + 1e-12)
        rhs = (w * x) @ Q
        gamma = np.linalg.solve(A, rhs[..., None])[..., 0]
        trend = gamma @ Q.T
        r = x - trend
        w = np.where(r > 0, biweight(r / (3 * tau)), biweight(r / (6 * tau))) * (w0 | (w > 0))
    return trend


def relative_weights(w: np.ndarray, B: np.ndarray, S: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Weights divided by each frame's squared level, so every frame counts by its *relative* fit:
    an over-exposed frame (40× the others) must not decide the flatfield alone."""
    level = np.abs(B * S.mean() + D.mean())
    floor = 1e-3 * float(np.median(level)) if np.any(level > 0) else 1.0
    return w / np.maximum(level, floor)[:, None] ** 2


def _solve(
    X: np.ndarray, B: np.ndarray, w: np.ndarray, P: np.ndarray, PD: np.ndarray, darkfield: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of X ≈ (P·a)·B (+ PD·b) from the per-block sufficient statistics."""
    stats = block_statistics(X, B, w)
    return solve_statistics(stats, P, PD, darkfield)


def block_statistics(X: np.ndarray, B: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(5, G): Σw, ΣwB, ΣwB², ΣwX, ΣwBX over frames — what the least squares needs, mergeable by addition."""
    powers = np.stack([np.ones_like(B), B, B * B])
    first = powers @ w
    wx = w * X
    second = powers[:2] @ wx
    return np.concatenate([first, second])


def solve_statistics(
    stats: np.ndarray, P: np.ndarray, PD: np.ndarray, darkfield: bool
) -> tuple[np.ndarray, np.ndarray]:
    s1, sb, sbb, sx, sbx = stats
    A11 = P.T @ (P * sbb[:, None])
    if not darkfield:
        return np.linalg.lstsq(A11, P.T @ sbx, rcond=1e-13)[0], np.zeros(PD.shape[1])
    A12 = P.T @ (PD * sb[:, None])
    A22 = PD.T @ (PD * s1[:, None])
    A = np.block([[A11, A12], [A12.T, A22]])
    solution = np.linalg.lstsq(A, np.concatenate([P.T @ sbx, PD.T @ sx]), rcond=1e-13)[0]
    return solution[: P.shape[1]], solution[P.shape[1] :]


def least_curvature_gauge(S: np.ndarray, D: np.ndarray, layout: GridLayout) -> float:
    """The c that gives D + c·S the least curvature (or, for a flat S, the least variance)."""
    lap_s, lap_d = laplacian(S, layout), laplacian(D, layout)
    curvature = float(lap_s @ lap_s)
    if curvature > 1e-10 * lap_s.size:
        return -float(lap_d @ lap_s) / curvature
    var = float(np.var(S))
    return -float(np.cov(D, S)[0, 1]) / var if var > 1e-12 else 0.0


def _baselines(
    Y: np.ndarray, S: np.ndarray, D: np.ndarray, w: np.ndarray, previous: np.ndarray
) -> np.ndarray:
    """B per frame by least squares over its floor blocks; frames without weight keep their value."""
    num = (w * (Y - D[None, :])) @ S
    den = w @ (S * S)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), previous)


def frame_baselines(
    Y: np.ndarray, V: np.ndarray, model: GridModel, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Baselines and floor weights of frames the model was not fitted on (or all frames in the final pass)."""
    S, D = model.fields()
    X = np.where(V > 0, Y - D, np.inf)
    B = low_quantile(X / S, max(START_QUANTILE, 0.02), axis=1)
    B = np.where(np.isfinite(B) & (B > 0), B, 0.0)
    w = np.zeros_like(Y)
    for _ in range(iterations):
        x, ok = _residuals(Y, S, B, D)
        w = biweight(x / (model.settings.window * model.tau)) * V * ok
        B = _baselines(Y, S, D, w, B)
    x, ok = _residuals(Y, S, B, D)
    w = biweight(x / (model.settings.window * model.tau)) * V * ok
    scatter = _frame_scatter(x, w)
    outlier = np.isfinite(scatter) & (scatter > model.frame_scatter_limit)
    support = w.sum(axis=1)
    w[outlier | (B <= 0)] = 0.0
    w[support < 3] = 0.0
    return B, w


def _frame_scatter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted RMS of each frame's floor residuals (NaN for frames without floor blocks)."""
    ws = w.sum(axis=1)
    ms = (w * x * x).sum(axis=1)
    return np.sqrt(np.divide(ms, ws, out=np.full(ws.shape, np.nan), where=ws > 0))


def _baseline_spread(B: np.ndarray, w: np.ndarray) -> float:
    used = w.sum(axis=1) > 0
    if used.sum() < 2:
        return 0.0
    b = B[used]
    return float(np.std(b) / abs(np.mean(b))) if np.mean(b) != 0 else 0.0
