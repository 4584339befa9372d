"""Synthetic slides: layer groups, the planted flatfield, determinism and the saved truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shadeflow.core.io.slide import load_slide, read_field
from shadeflow.core.synth.slides import (
    POLARIS_GROUPS,
    VECTRA_GROUPS,
    SynthConfig,
    planted_flatfield,
    read_truth_flatfield,
    read_truth_masks,
    synthetic_layer_groups,
    write_cohort,
)

SMALL = dict(slides=1, fields=6, shape=(40, 48, 6))


@pytest.mark.parametrize("n_layers", range(1, 51))
def test_layer_groups_cover_all_layers_contiguously(n_layers):
    groups = synthetic_layer_groups(n_layers)
    bounds = list(groups.values())
    assert bounds[0][0] == 1
    assert bounds[-1][1] == n_layers
    for (_, last), (next_first, _) in zip(bounds, bounds[1:]):
        assert next_first == last + 1
    assert all(first <= last for first, last in bounds)
    assert all(isinstance(v, int) for b in bounds for v in b)
    assert "dapi" in groups


def test_layer_groups_of_real_microscopes():
    assert synthetic_layer_groups(35) == VECTRA_GROUPS
    assert synthetic_layer_groups(43) == POLARIS_GROUPS
    assert synthetic_layer_groups(35)["cy5"] == [33, 35]
    assert synthetic_layer_groups(43)["opal780"] == [10, 11]


def test_layer_groups_reject_zero_layers():
    with pytest.raises(ValueError):
        synthetic_layer_groups(0)


@pytest.mark.parametrize("shape", [(40, 48, 3), (251, 336, 10), (64, 64, 1)])
def test_planted_flatfield_has_unit_mean_and_corner_falloff(shape):
    flat = planted_flatfield(shape, corner_falloff=0.3)
    assert flat.shape == (shape[2], shape[0], shape[1])
    np.testing.assert_allclose(flat.mean(axis=(1, 2)), 1.0, rtol=1e-12)
    for layer in flat:
        assert layer.min() / layer.max() <= 0.8
        assert layer.min() > 0
        corners = [layer[0, 0], layer[0, -1], layer[-1, 0], layer[-1, -1]]
        assert max(corners) < layer.max()


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    a = tmp_path_factory.mktemp("synth_a")
    b = tmp_path_factory.mktemp("synth_b")
    c = tmp_path_factory.mktemp("synth_c")
    write_cohort(str(a), SynthConfig(seed=3, **SMALL))
    write_cohort(str(b), SynthConfig(seed=3, **SMALL), workers=1)
    write_cohort(str(c), SynthConfig(seed=4, **SMALL))
    return a, b, c


def _field_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/fields/*"))}


def test_write_cohort_is_deterministic_for_a_seed(two_runs):
    a, b, _ = two_runs
    fa, fb = _field_bytes(a), _field_bytes(b)
    assert len(fa) == 6
    assert fa == fb
    for name in ("fields.csv", "slide.json"):
        assert (a / "SYN1_1" / name).read_bytes() == (b / "SYN1_1" / name).read_bytes()


def test_write_cohort_differs_between_seeds(two_runs):
    a, _, c = two_runs
    fa, fc = _field_bytes(a), _field_bytes(c)
    assert fa.keys() == fc.keys()  # same grid, same names
    assert all(fa[k] != fc[k] for k in fa)


def test_written_slide_is_valid_and_truth_masks_load(two_runs):
    root = two_runs[0]
    slide = load_slide(str(root / "SYN1_1"))
    h, w, l = SMALL["shape"]
    assert slide.shape == (h, w, l)
    n_groups = len(synthetic_layer_groups(l))
    for field in slide.fields:
        truth = read_truth_masks(str(root), slide.slide_id, field.key, (h, w))
        assert set(truth) == {"tissue", "empty", "blur", "saturation"}
        for name in ("tissue", "empty", "blur"):
            assert truth[name].shape == (h, w) and truth[name].dtype == bool
        assert truth["saturation"].shape == (n_groups, h, w)
        assert not (truth["tissue"] & truth["empty"]).any()
        assert read_field(slide, field).shape == (l, h, w)


def test_truth_flatfield_is_the_planted_one(two_runs):
    root = two_runs[0]
    shape = SMALL["shape"]
    np.testing.assert_allclose(read_truth_flatfield(str(root), shape), planted_flatfield(shape, 0.3))
    truth = json.loads((root / "synthetic_truth" / "truth.json").read_text())
    assert truth["config"]["seed"] == 3


def test_write_cohort_rejects_tiny_fields(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        write_cohort(str(tmp_path), SynthConfig(slides=1, fields=2, shape=(20, 48, 3)))
    assert not os.listdir(tmp_path)


# --- the knobs of ``synth slides`` (issue 10): defaults unchanged, ranges honoured ---------------

#: sha256 of SynthConfig(seed=3, **SMALL)'s slide folder, as generated before the knobs existed
DEFAULT_COHORT_SHA256 = "64c3c399a83465e707c25ea948a9491d46e731affd3631215600e6c0c39da01f"


def _slide_digest(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.glob("SYN1_1/**/*")):
        if path.is_file():
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_defaults_make_the_same_cohort_as_before_the_knobs(two_runs):
    """Every knob is off by default, and then not one random draw changes (the demo's data stay the same)."""
    config = SynthConfig(seed=3, **SMALL)
    assert (
        config.tissue_coverage,
        config.background_ratio,
        config.exposure_range,
        config.tissue_rate,
        config.grid,
    ) == (None,) * 5
    assert config.low_count_layers == 0 and config.columns == 3  # ⌈√(6·4/3)⌉, as before
    assert _slide_digest(two_runs[0]) == DEFAULT_COHORT_SHA256


def test_grid_sets_the_fields_and_their_raster():
    from shadeflow.core.synth.slides import field_grid

    config = SynthConfig(grid=(5, 3), fields=99)
    assert config.fields == 15 and config.columns == 5
    specs = field_grid(config, "S", 0)
    assert len({s.cx for s in specs}) == 5 and len({s.cy for s in specs}) == 3


@pytest.mark.parametrize(
    "knobs",
    [
        dict(tissue_coverage=1.0),
        dict(tissue_coverage=0.0),
        dict(exposure_range=(0.0, 5.0)),
        dict(exposure_range=(9.0, 5.0)),
        dict(tissue_rate=(-1.0, 5.0)),
        dict(grid=(0, 4)),
        dict(fold_probability=1.5),
        dict(saturation_probability=-0.1),
        dict(dark_current=-1.0),
        dict(background_ratio=-0.5),
        dict(low_count_layers=-1),
    ],
)
def test_knobs_out_of_range_are_refused(knobs):
    with pytest.raises(ValueError):
        SynthConfig(**knobs)


def test_levels_follow_the_knobs():
    from shadeflow.core.synth.slides import TISSUE_BRIGHTNESS, cohort_levels

    groups = synthetic_layer_groups(10)
    default = cohort_levels(SynthConfig(shape=(40, 48, 10)), groups)
    assert default.tissue_rate == {g: TISSUE_BRIGHTNESS[g] for g in groups} and set(default.background) == {
        0.1
    }
    assert default.low_count_rate == {}

    config = SynthConfig(
        shape=(40, 48, 10),
        dark_current=4.0,
        background_ratio=0.5,
        exposure_range=(4.0, 64.0),
        tissue_rate=(8.0, 70.0),
        low_count_layers=3,
        low_count_signal=12.0,
        seed=5,
    )
    levels = cohort_levels(config, groups)
    assert (
        all(8.0 <= r <= 70.0 for r in levels.tissue_rate.values())
        and len(set(levels.tissue_rate.values())) > 1
    )
    # ratio × dark ÷ median exposure (√(4·64) = 16 ms)
    np.testing.assert_allclose(levels.background, 0.5 * 4.0 / 16.0)
    dapi = range(groups["dapi"][0] - 1, groups["dapi"][1])
    assert len(levels.low_count_rate) == 3 and not set(levels.low_count_rate) & set(dapi)
    assert set(levels.low_count_rate.values()) == {12.0 / 16.0}
    assert levels == cohort_levels(config, groups)  # seeded


@pytest.fixture(scope="module")
def knob_cohort(tmp_path_factory):
    """A slide drawn with every knob set."""
    root = tmp_path_factory.mktemp("knobs")
    config = SynthConfig(
        slides=1,
        shape=(48, 64, 6),
        grid=(7, 6),
        seed=2,
        tissue_coverage=0.4,
        dark_current=10.0,
        background_ratio=2.0,
        exposure_range=(5.0, 40.0),
        tissue_rate=(20.0, 30.0),
        low_count_layers=2,
        low_count_signal=20.0,
        fold_probability=1.0,
        saturation_probability=0.0,
    )
    (url,) = write_cohort(str(root), config, workers=1)
    return str(root), load_slide(url), config


def test_knob_cohort_honours_grid_exposure_and_densities(knob_cohort):
    root, slide, config = knob_cohort
    assert len(slide.fields) == 42 and slide.dark_current == 10.0
    exposures = np.array([f.exposure_ms for f in slide.fields])
    assert exposures.min() >= 5.0 and exposures.max() <= 40.0
    assert all(len(np.unique(exposures[:, g])) > 20 for g in range(exposures.shape[1]))  # varies per field
    truths = [read_truth_masks(root, slide.slide_id, f.key, slide.shape[:2]) for f in slide.fields]
    assert all(t["blur"].any() for t in truths)  # fold density 1: every field folds
    assert not any(t["saturation"].any() for t in truths)  # saturation density 0


def test_knob_cohort_honours_coverage_background_and_low_counts(knob_cohort):
    from shadeflow.core.meanimage.pipeline import plan_slide
    from shadeflow.core.synth.slides import cohort_levels

    root, slide, config = knob_cohort
    plan = plan_slide(slide)
    flat = read_truth_flatfield(root, slide.shape)
    levels = cohort_levels(config, synthetic_layer_groups(6))
    coverage, background, low = [], [], []
    for f in plan.bulk_fields:
        truth = read_truth_masks(root, slide.slide_id, f.key, slide.shape[:2])
        coverage.append(truth["tissue"].mean())
        raw = read_field(slide, f).astype(np.float64) - config.dark_current
        exposure = slide.exposure_per_layer(f)
        empty = truth["empty"]
        if empty.sum() > 200:
            background.append(raw[:, empty].sum(axis=1) / (exposure * flat[:, empty].sum(axis=1)))
        inner = truth["tissue"] & ~truth["blur"]
        if inner.sum() > 200:
            low.append(
                [raw[l, inner].sum() / (exposure[l] * flat[l, inner].sum()) for l in levels.low_count_rate]
            )
    assert np.mean(coverage) == pytest.approx(0.4, abs=0.05)
    # counts/ms above dark
    np.testing.assert_allclose(np.mean(background, axis=0), levels.background, rtol=0.1)
    expected = np.array(list(levels.low_count_rate.values())) + np.array(
        [levels.background[l] for l in levels.low_count_rate]
    )
    np.testing.assert_allclose(np.mean(low, axis=0), expected, rtol=0.25)


def test_cli_passes_the_knobs_to_the_generator(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import shadeflow.core.synth.slides as synth_module
    from shadeflow.flows.cli import app

    seen = []
    monkeypatch.setattr(
        synth_module,
        "write_cohort",
        lambda out, config, workers=2, layout="shadeflow": seen.append(config) or [],
    )
    args = [
        "synth",
        "slides",
        "--out",
        str(tmp_path / "c"),
        "--shape",
        "64",
        "80",
        "5",
        "--grid",
        "12x10",
        "--tissue-coverage",
        "0.3",
        "--dark-current",
        "4",
        "--background-ratio",
        "0.5",
        "--low-count-layers",
        "2",
        "--low-count-signal",
        "12",
        "--exposure-range",
        "4",
        "80",
        # fmt: skip
        "--tissue-rate",
        "8",
        "70",
        "--fold-density",
        "0.5",
        "--saturation-density",
        "0.1",
        "--seed",
        "9",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (
        config.grid == (12, 10)
        and config.fields == 120
        and config.tissue_coverage == 0.3
        and config.dark_current == 4.0
    )
    assert config.background_ratio == 0.5 and config.low_count_layers == 2 and config.low_count_signal == 12.0
    assert config.exposure_range == (4.0, 80.0) and config.tissue_rate == (8.0, 70.0)
    assert config.fold_probability == 0.5 and config.saturation_probability == 0.1 and config.seed == 9
    bad = CliRunner().invoke(app, ["synth", "slides", "--out", str(tmp_path / "d"), "--grid", "12by10"])
    assert bad.exit_code == 2
