"""The quantile-lines method (core.estimate.quantile_lines) on stacks with no dark background, and auto's
fallback to it where the polynomial is refused (issue 10, items 2–3).

Tolerances: each case was measured once (seeded, deterministic) and the bound is about twice that
figure, so a regression that doubles the error fails while the issue's 1.5 % worst case stays the bar
where the figure allows it."""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
from test_estimate_plausible import real_stack

from shadeflow.core.estimate.chunked import estimate_shading_dask
from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading
from shadeflow.core.estimate.grid import EstimateError, block_means, grid_layout, relative_rms
from shadeflow.core.estimate.quantile_lines import fit_lines
from shadeflow.core.synth.sweep import draw_case, generate

SMALL = {
    "n": 160,
    "height": 96,
    "width": 96,
    "mean_counts": 2000.0,
    "outlier_fraction": 0.0,
    "dtype": "uint16",
}


def small_case(seed: int, scene: str, shading: str, darkfield: str, drift: str):
    case = draw_case(seed, scene=scene, shading=shading, darkfield=darkfield, drift=drift)
    return generate(replace(case, **SMALL))


def test_auto_falls_back_to_quantile_lines_where_the_polynomial_is_refused_and_says_so():
    """A brightfield stack behind a sharp aperture: no frame shows a dark background, the polynomial
    flatfield goes negative (refused); the lines answer 0.68 % off (bound 1.5 %, the issue's target)."""
    images, truth = small_case(0, "brightfield", "aperture", "flat", "steps")
    result = estimate_shading(images, darkfield=True)  # auto, the default
    assert result.diagnostics["method_used"] == "lines" and result.settings.method == "auto"
    assert result.notes[0].startswith("the polynomial fit was refused"), result.notes
    assert 100 * relative_rms(result.flatfield.astype(np.float64), truth.flatfield) <= 1.5
    assert result.flatfield.min() > 0


def test_without_a_darkfield_auto_prefers_the_lines_to_free_surfaces_where_the_polynomial_is_refused():
    """The same brightfield aperture without a camera offset: the lines answer 0.61 % off (bound 1.2 %);
    free surfaces, the fallback before, were 1.06 % off (seeds 1 and 2: lines 1.28 / 0.41 %, surfaces
    1.98 / 1.53 %)."""
    images, truth = small_case(0, "brightfield", "aperture", "none", "steps")
    result = estimate_shading(images, darkfield=False)
    assert result.diagnostics["method_used"] == "lines", result.notes
    assert "fitted with quantile lines instead" in result.notes[0]
    assert 100 * relative_rms(result.flatfield.astype(np.float64), truth.flatfield) <= 1.2


@pytest.fixture(scope="module")
def confluent():
    return small_case(0, "confluent", "radial", "flat", "steps")


def test_lines_fit_a_confluent_layer_and_keep_the_darkfield_below_the_data(confluent):
    """A confluent layer (no background anywhere) with a flat camera offset: 1.29 % off (bound 2.5 %); on the
    grid the darkfield is below the darkest 1 % of the data at every block, by construction."""
    images, truth = confluent
    result = estimate_shading(images, darkfield=True, settings=EstimateSettings(method="lines"))
    assert 100 * relative_rms(result.flatfield.astype(np.float64), truth.flatfield) <= 2.5
    layout = grid_layout(images.shape[1:], 96)
    Y, V = block_means(images, layout, saturation=65535.0)
    fit = fit_lines(Y, V, layout, darkfield=True)
    darkest = np.quantile(np.where(V > 0, Y, np.inf), 0.01, axis=0, method="lower")
    assert np.all(fit.dark <= darkest + 1e-9) and np.all(fit.flat > 0)
    assert fit.diagnostics["split_half_spread_pct"] < 1.5
    # its level is the gauge's choice, and the answer says so; the flatfield does not depend on it
    assert any(note.startswith("the quantile lines fix the darkfield only up to") for note in result.notes)
    without = estimate_shading(images, darkfield=False, settings=EstimateSettings(method="lines"))
    assert not any("fix the darkfield" in note for note in without.notes), without.notes
    # the flow's path (frames reduced chunk by chunk on Dask) gives the same answer
    lazy = da.from_array(images, chunks=(40, 96, 96))
    chunked = estimate_shading_dask(lazy, darkfield=True, settings=EstimateSettings(method="lines"))
    assert np.array_equal(chunked.flatfield, result.flatfield)


def test_a_timelapse_of_one_field_is_refused_a_darkfield_and_warned_about_without_one():
    """nanog (BaSiC's public timelapse: colonies growing in one field): every pixel's quantiles follow its
    own specimen, not the flatfield; fits on the first and the second half of the frames lie far further
    apart (6.3 % when measured) than fits on alternate frames (0.5 %). The lines' slopes then say nothing
    of a darkfield: refused. Flatfield-only the lines are the frames' robust mean level: answered (on the
    planted-shading check of bench/real.py, 0.07 % where free surfaces were 1.8 % off), with the warning."""
    images = real_stack("timelapse_nanog")
    with pytest.raises(EstimateError, match="not stationary over the frames.*timelapse"):
        estimate_shading(images, darkfield=True, settings=EstimateSettings(method="lines"))
    result = estimate_shading(images, darkfield=False, settings=EstimateSettings(method="lines"))
    assert any("not stationary over the frames" in note for note in result.notes), result.notes
    assert np.all(result.flatfield > 0)


def test_a_block_saturated_at_a_quantile_level_takes_its_neighbours_line():
    """A block voided (saturated) in a fifth of the frames has no 0.9 quantile; one such block among
    the ≥ 99 % whole ones used to turn every block's slope into NaN (the spatial mean of the level was
    ∞). The other blocks' lines are those of the stack without it, and the block takes a neighbour's."""
    from shadeflow.core.estimate.quantile_lines import level_weights, lines

    rng = np.random.default_rng(3)
    n, g = 60, 200
    flat = np.linspace(0.6, 1.4, g)
    Y = flat * rng.gamma(4.0, 50.0, size=(n, 1)) + 30 + rng.normal(0, 1, (n, g))
    V = np.ones_like(Y)
    weights = level_weights(Y, V)
    alpha, slope = lines(Y, V, weights)
    V[: n // 5, 7] = 0  # block 7 saturated in 12 of 60 frames
    alpha_s, slope_s = lines(Y, V, weights)
    assert np.all(np.isfinite(alpha_s)) and np.all(np.isfinite(slope_s))
    keep = np.arange(g) != 7
    assert np.allclose(slope_s[keep], slope[keep], rtol=0.02)
    assert slope_s[7] in (slope_s[6], slope_s[8])
