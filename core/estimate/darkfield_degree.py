"""The floor darkfield's flexibility, chosen from the frames by two-fold cross-validation.

A darkfield's shape depends on the camera and the light path: a flat offset, a tilt, an amplifier's
glow in a corner. One fixed polynomial degree is wrong for some of them: a quadratic cannot hold a
corner glow (randomised sweep, seed 21: the flatfield 2.5 % off at degree 2, 0.4 % at degree 4), and a
more flexible darkfield trades shape with the flatfield where the frames hardly tell them apart. So the
degree is chosen by the frames:

1. fit the floor with each candidate degree on every other frame, and again on the others (the halves of
   ``core.estimate.holdout``, which span the same drift);
2. predict the floor of the frames left out: each held-out frame gets its own baseline B (a few
   reweighted least-squares steps, as in the final pass), so only the shapes S and D are tested;
3. score the prediction with Tukey's bounded biweight loss of the relative residual, at one noise scale
   shared by every candidate: a floor block costs its squared misfit, a specimen block (far above the
   floor) costs 1 whatever the candidate, so the specimen cannot favour one degree;
4. the default degree (2) answers unless a higher one predicts better in both folds by more than two
   standard errors of the per-frame differences, and its flatfield moves between the halves no more than
   the default's (or than the split-half limit); a candidate refused on a half (its flatfield not
   positive, its darkfield above the data) is not a candidate. Where the default itself is refused on a
   half, the higher degree of least loss whose halves agree within the limit answers. A degree other than
   the default is said with a warning: a polynomial may not hold a glow's shape (on the sweep two such
   answers were 0.4 and 0.5 % off, one 3.6 %).

The two half-fits of the chosen degree are also the fits of the split-half check
(``core.estimate.holdout``): their spread is returned, so that check costs nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from .floor_fit import (
    START_QUANTILE,
    FitSettings,
    GridModel,
    _baselines,
    _residuals,
    biweight,
    low_quantile,
)
from .grid import EstimateError
from .holdout import SPREAD_LIMIT, spread_of_halves

#: the degrees tried: the default and up to a quartic (a corner glow). Lower degrees are not tried: on the
#: randomised sweep they won by noise and lost accuracy (seed 6: 0.18 → 0.55 %; seed 9: a refusal
#: became a 7.6 % answer)
CANDIDATES = (2, 3, 4)
#: another degree replaces the default only when it predicts held-out frames better by this many
#: standard errors of the per-frame differences (differences within the noise are not evidence)
SIGNIFICANCE = 2.0
HALVES = (slice(0, None, 2), slice(1, None, 2))


@dataclass
class DegreeChoice:
    """The chosen degree, each candidate's held-out loss (∞: refused on a half) and the split-half spread
    (%) of the chosen degree's half-fits (None when no candidate was fitted on both halves)."""

    degree: int
    losses: dict[int, float]
    spread: float | None
    default: int

    @property
    def rescued(self) -> bool:
        """A higher degree answers where the default was refused on a half of the frames."""
        return self.degree != self.default and not np.isfinite(self.losses.get(self.default, np.inf))


def choose_darkfield_degree(
    Y: np.ndarray,
    V: np.ndarray,
    settings: FitSettings,
    fit: Callable[[np.ndarray, np.ndarray, FitSettings], GridModel],
) -> DegreeChoice:
    """The darkfield degree that best predicts held-out frames' floor (module description).

    ``fit(Y, V, settings)`` fits one half and raises ``EstimateError`` when it refuses it. Falls back to
    ``settings.darkfield_degree`` (with no half-fits) when every candidate is refused on a half.
    """
    candidates = [d for d in CANDIDATES if settings.darkfield_degree <= d <= settings.degree]
    halves: dict[int, tuple[GridModel, GridModel]] = {}
    for degree in candidates:
        try:
            pair = tuple(fit(Y[h], V[h], replace(settings, darkfield_degree=degree)) for h in HALVES)
        except EstimateError:
            continue
        halves[degree] = pair  # type: ignore[assignment]
    losses = {d: float("inf") for d in candidates}
    if not halves:
        return DegreeChoice(settings.darkfield_degree, losses, None, settings.darkfield_degree)
    # the fit's own objective, at one noise scale for all candidates
    scale = settings.window * float(np.median([m.tau for pair in halves.values() for m in pair]))
    per_frame = {
        d: (
            frame_losses(held_out_residuals(even, Y[HALVES[1]], V[HALVES[1]]), scale),
            frame_losses(held_out_residuals(odd, Y[HALVES[0]], V[HALVES[0]]), scale),
        )
        for d, (even, odd) in halves.items()
    }
    for degree, folds in per_frame.items():
        losses[degree] = float(np.nanmean(np.concatenate(folds)))
    # a degree whose flatfield the halves determine worse than the default's (or, with the default refused,
    # poorly) has bought its fit with the flatfield: on the sweep, an empty scene at 7 counts with a flat
    # offset predicted better at degree 4 while its flatfield moved 1.8 % between the halves
    spreads = {d: spread_of_halves(*(m.fields()[0] for m in pair)) for d, pair in halves.items()}
    default_spread = spreads.get(settings.darkfield_degree, float("inf"))
    limit = max(default_spread if np.isfinite(default_spread) else 0.0, SPREAD_LIMIT)
    eligible = {
        d: folds for d, folds in per_frame.items() if spreads[d] <= limit or d == settings.darkfield_degree
    }
    best = _clearly_better(eligible, settings.darkfield_degree)
    return DegreeChoice(best, losses, spreads.get(best), settings.darkfield_degree)


def _clearly_better(per_frame: dict[int, tuple[np.ndarray, np.ndarray]], default: int) -> int:
    """The default degree unless a higher one predicts the held-out frames better in both folds, each by
    more than :data:`SIGNIFICANCE` standard errors of its paired per-frame differences (then the one that
    gains most); when the default was refused on a half, the higher degree of least loss, if any (and the
    default, to be refused, if none)."""
    higher = [d for d in per_frame if d > default]
    if default not in per_frame:
        return (
            min(higher, key=lambda d: float(np.nanmean(np.concatenate(per_frame[d])))) if higher else default
        )
    best, best_gain = default, 0.0
    for degree in higher:
        gains = []
        for base, values in zip(per_frame[default], per_frame[degree], strict=True):
            difference = base - values
            difference = difference[np.isfinite(difference)]
            if difference.size < 4:
                break
            gain = float(difference.mean())
            if not gain > SIGNIFICANCE * float(difference.std(ddof=1)) / np.sqrt(difference.size):
                break
            gains.append(gain)
        else:
            if sum(gains) > best_gain:
                best, best_gain = degree, sum(gains)
    return best


def held_out_residuals(model: GridModel, Y: np.ndarray, V: np.ndarray, steps: int = 3) -> np.ndarray:
    """Relative residuals of ``model``'s floor in frames it was not fitted on, each frame with its own
    baseline (module description, step 2): NaN where a block is not valid, ∞ where its predicted level is
    not positive."""
    S, D = model.fields()
    valid = V > 0
    Y = np.where(valid, Y, 0.0)  # invalid blocks (saturated, masked) may hold NaN
    B = low_quantile(np.where(valid, Y - D, np.inf) / S, START_QUANTILE, axis=1)
    B = np.where(np.isfinite(B) & (B > 0), B, 0.0)
    scale = model.settings.window * model.tau
    for _ in range(steps):
        x, ok = _residuals(Y, S, B, D)
        B = _baselines(Y, S, D, biweight(x / scale) * V * ok, B)
    x, ok = _residuals(Y, S, B, D)
    return np.where(valid, np.where(ok, x, np.inf), np.nan)


def frame_losses(x: np.ndarray, scale: float) -> np.ndarray:
    """Per frame, the mean over its valid blocks of Tukey's bounded loss 1 − (1 − u²)³ of u = x/scale
    (1 beyond |u| = 1); NaN for a frame with no valid block."""
    valid = ~np.isnan(x)
    loss = 1.0 - biweight(np.where(valid, x, 0.0) / scale) ** 1.5
    count = valid.sum(axis=1)
    total = np.where(valid, loss, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(count.shape, np.nan), where=count > 0)
