"""The randomised sweep generator (core.synth.sweep) against its own definition, and the estimator on the
hardest kinds of case it draws, held to the issue's worst-case target (flatfield error ≤ 1.5 %)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from shadeflow.core.estimate.estimator import estimate_shading
from shadeflow.core.estimate.grid import EstimateError, relative_rms
from shadeflow.core.synth import sweep
from shadeflow.core.synth.sweep import draw_case, generate

SMALL = {"n": 40, "height": 64, "width": 80}


def noise_free(case: sweep.SweepCase, dtype: str = "float32") -> sweep.SweepCase:
    return replace(case, shot_noise=False, read_noise=0.0, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# the generator


def test_cases_and_stacks_are_seeded():
    case = draw_case(7, **SMALL)
    assert draw_case(7, **SMALL) == case
    a, truth_a = generate(case)
    b, truth_b = generate(case)
    assert np.array_equal(a, b) and np.array_equal(truth_a.baseline, truth_b.baseline)
    assert truth_a.outliers == truth_b.outliers
    other, _ = generate(draw_case(8, scene=case.scene, **SMALL))
    assert not np.array_equal(a, other)


def test_stratified_draw_covers_every_kind():
    cases = [draw_case(seed) for seed in range(50)]
    for name, kinds, least in (
        ("scene", sweep.SCENES, 10),
        ("shading", sweep.SHADINGS, 12),
        ("darkfield", sweep.DARKFIELDS, 12),
        ("drift", sweep.DRIFTS, 16),
    ):
        counts = Counter(getattr(c, name) for c in cases)
        assert set(counts) == set(kinds) and min(counts.values()) >= least, f"{name}: {counts}"
    assert Counter(c.dtype for c in cases)["float32"] >= 3
    assert any(c.outlier_count == 0 for c in cases) and any(c.outlier_count > 0 for c in cases)
    frames = [c.n for c in cases]
    assert min(frames) < 40 and max(frames) > 500  # log-uniform 20–1000 reaches both ends


def test_drawn_parameters_stay_in_their_ranges():
    for seed in range(200):
        c = draw_case(seed)
        assert sweep.FRAMES[0] <= c.n <= sweep.FRAMES[1]
        assert sweep.SIZES[0] <= min(c.height, c.width) and max(c.height, c.width) <= sweep.SIZES[1]
        assert c.n * c.height * c.width <= sweep.MAX_PIXELS
        assert sweep.COUNTS[0] <= c.mean_counts <= sweep.COUNTS[1]
        assert sweep.READ_NOISE[0] <= c.read_noise <= sweep.READ_NOISE[1]
        assert 0 <= c.outlier_fraction <= sweep.MAX_OUTLIERS
        s, d = c.shading_params, c.darkfield_params
        if c.shading in ("radial", "offcentre", "aperture"):
            assert 0.5 <= s["corner"] <= 0.9
        if c.shading == "aperture":
            assert 0.01 <= s["edge_width"] <= 0.03 and 0.05 <= s["outside"] <= 0.4
        if c.shading == "tilted":
            assert 0.5 <= s["ratio"] <= 0.9 and abs(s["curvature"]) <= 0.1
        if c.has_darkfield:
            assert 50 <= d["offset"] <= 500
        if c.darkfield == "gradient":
            assert 0.02 <= d["ramp"] <= 0.2
        if c.darkfield == "glow":
            assert 5 <= d["amplitude"] <= 50


@pytest.mark.parametrize("scene", sweep.SCENES)
def test_noise_free_images_follow_from_the_truth(scene):
    case = noise_free(draw_case(11, scene=scene, outlier_fraction=0.1, **SMALL))
    images, truth = generate(case, keep_specimen=True)
    expected = truth.expected_images()
    assert images.dtype == np.float32 and np.allclose(images, expected, rtol=1e-5, atol=1e-3)
    # 4 outliers cycle through every kind
    assert sorted(truth.outliers.values()) == sorted(sweep.OUTLIER_KINDS)
    shutter = next(i for i, kind in truth.outliers.items() if kind == "shutter")
    assert truth.baseline[shutter] == 0 and np.allclose(images[shutter], truth.darkfield)
    regular = [i for i in range(case.n) if i not in truth.outliers]
    signal = truth.flatfield * truth.baseline[regular, None, None] * truth.specimen[regular]
    assert signal.mean() == pytest.approx(case.mean_counts, rel=1e-5)  # the drawn brightness, exactly
    assert truth.flatfield.mean() == pytest.approx(1.0)
    as_uint16, _ = generate(noise_free(case, "uint16"))
    # float32 arithmetic may round across .5
    assert np.abs(as_uint16 - np.clip(np.rint(expected), 0, 65535)).max() <= 1


def test_scenes_are_what_they_say():
    def specimen(scene):
        case = noise_free(draw_case(3, scene=scene, outlier_fraction=0.0, n=20, height=128, width=128))
        return generate(case, keep_specimen=True)[1].specimen

    near_background = {scene: float((np.abs(specimen(scene) - 1) < 0.05).mean()) for scene in sweep.SCENES}
    assert near_background["empty"] > 0.95 and near_background["sparse"] > 0.6
    assert near_background["confluent"] == 0.0  # no background anywhere
    assert 0.1 < near_background["tissue"] < 0.55
    bright = specimen("brightfield")  # transmission: a bright background, darker cells, some halos above 1
    assert bright.max() > 1.02 and np.median(bright) > 0.8 and bright.min() < 0.7


def test_shadings_are_what_they_say():
    shape = (120, 150)
    for seed in range(12):
        case = draw_case(seed, shading="radial", height=shape[0], width=shape[1])
        p = case.shading_params
        flat = sweep.radial_falloff(shape, p["centre_y"], p["centre_x"], p["corner"])
        corners = [flat[0, 0], flat[0, -1], flat[-1, 0], flat[-1, -1]]
        assert min(corners) / flat.max() == pytest.approx(p["corner"], abs=0.02)
        offcentre = draw_case(seed, shading="offcentre").shading_params
        assert 0.1 <= math.hypot(offcentre["centre_x"], offcentre["centre_y"]) <= 0.3
        tilt = draw_case(seed, shading="tilted").shading_params
        plane = sweep.tilted(shape, tilt["angle"], tilt["ratio"], 0.0)
        assert plane.min() / plane.max() == pytest.approx(tilt["ratio"], abs=0.02)
        edge = draw_case(seed, shading="aperture").shading_params
        stop = sweep.aperture(shape, edge)
        assert stop.min() >= edge["outside"] - 1e-9 and stop.max() <= 1
        assert stop.min() < (1 + edge["outside"]) / 2 < stop.max()  # the edge crosses the frame
        full = sweep.shading_field(draw_case(seed, shading="aperture", height=shape[0], width=shape[1]))
        assert full.mean() == pytest.approx(1.0)


def test_darkfields_and_drifts_are_what_they_say():
    for seed in range(12):
        flat = draw_case(seed, darkfield="flat", **SMALL)
        assert np.all(sweep.darkfield_field(flat) == flat.darkfield_params["offset"])
        assert not sweep.darkfield_field(draw_case(seed, darkfield="none", **SMALL)).any()
        ramp = draw_case(seed, darkfield="gradient", **SMALL)
        d, p = sweep.darkfield_field(ramp), ramp.darkfield_params
        assert d.min() == pytest.approx(p["offset"], rel=0.01)
        assert d.max() == pytest.approx(p["offset"] * (1 + p["ramp"]), rel=0.01)
        glow = draw_case(seed, darkfield="glow", **SMALL)
        d, p = sweep.darkfield_field(glow), glow.darkfield_params
        assert 0.8 * p["amplitude"] <= d.max() - p["offset"] <= p["amplitude"]
        for drift in sweep.DRIFTS:
            case = draw_case(seed, drift=drift, outlier_fraction=0.0, n=60)
            b = sweep.baseline_drift(case, np.random.default_rng(seed))
            jitter = case.drift_params["jitter"]
            if drift == "constant":
                assert np.all(np.abs(b - 1) <= jitter)
            elif drift == "bleach":
                assert b[-1] == pytest.approx(case.drift_params["end"], rel=2 * jitter + 1e-9)
                assert np.all(np.diff(b) < 2 * jitter + 1e-9)
            else:
                levels = b / (1 + jitter)
                assert (
                    np.all((b >= 0.5 * (1 - jitter)) & (b <= 2 * (1 + jitter)))
                    and np.ptp(levels) > 2 * jitter
                )


def test_noise_is_poisson_plus_read_noise():
    case = draw_case(
        5, scene="tissue", darkfield="flat", dtype="float32", outlier_fraction=0.0, mean_counts=200.0, **SMALL
    )
    images, truth = generate(case, keep_specimen=True)
    expected = truth.expected_images()
    residual = images - expected
    assert residual.mean() == pytest.approx(0, abs=0.1)
    assert residual.var() == pytest.approx((expected - truth.darkfield).mean() + case.read_noise**2, rel=0.02)


def test_bright_cases_saturate_in_uint16():
    case = draw_case(2, scene="sparse", mean_counts=30_000.0, dtype="uint16", outlier_fraction=0.0, **SMALL)
    images, truth = generate(case)
    assert truth.saturated_fraction > 0 and images.max() == 65535


# ---------------------------------------------------------------------------------------------
# the estimator on the hardest kinds (the worst-case target; some fail with today's estimator)

HARD = {
    "brightfield-aperture-darkfield": dict(
        seed=1001,
        scene="brightfield",
        shading="aperture",
        darkfield="gradient",
        drift="constant",
        n=80,
        height=128,
        width=160,
        mean_counts=2000.0,
    ),
    "confluent-glow": dict(
        seed=1002,
        scene="confluent",
        shading="offcentre",
        darkfield="glow",
        drift="constant",
        n=80,
        height=144,
        width=144,
        mean_counts=500.0,
    ),
    "low-counts-outliers": dict(
        seed=1003,
        scene="sparse",
        shading="radial",
        darkfield="flat",
        drift="constant",
        n=100,
        height=128,
        width=128,
        mean_counts=7.0,
        outlier_fraction=0.05,
    ),
    "empty-drift": dict(
        seed=1004,
        scene="empty",
        shading="tilted",
        darkfield="flat",
        drift="steps",
        n=80,
        height=128,
        width=128,
        mean_counts=300.0,
    ),
    "tissue-20-frames": dict(
        seed=1005,
        scene="tissue",
        shading="offcentre",
        darkfield="gradient",
        drift="bleach",
        n=20,
        height=160,
        width=128,
        mean_counts=1000.0,
        outlier_fraction=0.0,
    ),
}
WORST_CASE_TARGET = 0.015


#: hard cases today's default estimator (auto: the floor, with --darkfield) does not meet yet — issue 10 stays
#: open on them; strict, so the day one passes the mark must go (measured at the last change: refused /
#: 3.8 % / 2.0 %)
NOT_YET = {
    "brightfield-aperture-darkfield": "refused: the polynomial flatfield cannot follow the aperture edge",
    "confluent-glow": "3.8 %: no background floor, and a curved glow the quadratic darkfield cannot hold",
    "tissue-20-frames": "2.0 %: twenty frames of tissue leave specimen structure in the floor",
}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET[n], strict=True)) if n in NOT_YET else n
        for n in HARD
    ],
)
def test_estimator_on_hard_cases(name):
    seed = HARD[name]["seed"]
    case = draw_case(dtype="uint16", **HARD[name])
    assert case.seed == seed
    images, truth = generate(case)
    try:
        result = estimate_shading(images, darkfield=case.has_darkfield)
    except EstimateError as exc:
        pytest.fail(f"{name}: the estimator refused the stack: {exc}", pytrace=False)
    error = relative_rms(result.flatfield.astype(np.float64), truth.flatfield)
    dark = float(np.sqrt(np.mean((result.darkfield - truth.darkfield) ** 2)))
    assert error <= WORST_CASE_TARGET, (
        f"{name}: flatfield error {error:.2%} (darkfield RMS error {dark:.1f} counts)"
    )
