"""How well the frames determine a fit: the flatfield refitted on two halves of the frames.

A flatfield estimated from images carries an error no residual reveals: where the frames hardly tell
the flatfield from the darkfield (little baseline variation, no dark background, few frames), many
profiles explain the floor equally well and the fit lands on one of them. Such an answer is unstable:
fitted on other frames it lands elsewhere. So the estimator fits the same model once more on each of
two halves of its frames — every other frame, so that both halves span the same drift, bleaching and
level steps — and measures how far the two flatfields lie apart:

    spread = RMS over the grid of ½ (log S_even − log S_odd − mean),

in %. For an error that is random over frames, each half's error is about √2 × the full fit's, so half
the difference of two halves estimates the full fit's error. Checked on the randomised sweep
(``bench/estimate.py --sweep``, BENCHMARKS.md): the wrong answers it cannot see are the biased ones
(the same wrong profile from both halves), not the unstable ones.

A half the method refuses (a flatfield below zero, a darkfield above the data) counts as an infinite
spread: what half of the frames cannot determine, all of them determine poorly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .grid import EstimateError

#: split-half spread (%) above which an answer is reported as poorly determined
SPREAD_LIMIT = 1.5


def split_half_spread(
    Y: np.ndarray, V: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> float:
    """The split-half spread (module description) of ``fit``, in %.

    Parameters
    ----------
    Y, V : ndarray
        Block means (N, G) and their validity, in frame order.
    fit : callable
        ``fit(Y_half, V_half)`` → the flatfield on the grid (G,); raises ``EstimateError`` when it refuses.

    Returns
    -------
    float
        The spread in %; ``inf`` when a half is refused or gives a flatfield that is not positive.
    """
    flats = []
    for half in (slice(0, None, 2), slice(1, None, 2)):
        try:
            flats.append(fit(Y[half], V[half]))
        except EstimateError:
            return float("inf")
    return spread_of_halves(*flats)


def spread_of_halves(even: np.ndarray, odd: np.ndarray) -> float:
    """The split-half spread (%) of the flatfields fitted on the even and on the odd frames; ``inf`` when
    either is not positive."""
    logs = []
    for flat in (even, odd):
        flat = np.asarray(flat, np.float64)
        if not (np.isfinite(flat).all() and (flat > 0).all()):
            return float("inf")
        logs.append(np.log(flat))
    difference = logs[0] - logs[1]
    difference -= difference.mean()
    return 100 * float(np.sqrt(np.mean(difference * difference))) / 2
