"""Synthetic slides: layer groups, the planted flatfield, determinism and the saved truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from shadeflow.core.slide import load_slide, read_field
from shadeflow.core.synth import (
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
    for (first, last), (next_first, _) in zip(bounds, bounds[1:]):
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
