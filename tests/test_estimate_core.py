"""The shading estimator on seeded synthetic stacks: accuracy against the planted truth, determinism,
and the Dask path (a real LocalCluster) equal to the in-memory one.

Every expected value comes from the generator (``core.synth.stacks``), never from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading
from shadeflow.core.synth.stacks import StackConfig, generate_stack


def relative_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS and max of (F̂/mean F̂)/(F/mean F) − 1, written out here from the benchmark's definition."""
    r = (estimate / estimate.mean()) / (truth / truth.mean())
    return float(np.sqrt(np.mean((r - 1) ** 2))), float(np.abs(r - 1).max())


_stacks: dict[StackConfig, tuple[np.ndarray, dict]] = {}


def stack(**kwargs) -> tuple[np.ndarray, dict]:
    config = StackConfig(**{"size": 128, "n": 60, "seed": 3, **kwargs})
    if config not in _stacks:
        _stacks[config] = generate_stack(config)
    return _stacks[config]


@pytest.mark.parametrize(
    "kind, darkfield, outliers, ff_limit, df_limit",
    [
        ("sparse", True, 0.0, 0.015, 4.0),
        ("sparse", True, 0.05, 0.010, 3.0),  # a closed-shutter frame even helps the darkfield
        ("empty", True, 0.0, 0.015, 4.0),
        ("sparse", False, 0.0, 0.006, None),
        ("tissue", False, 0.0, 0.015, None),
        ("tissue", False, 0.05, 0.015, None),  # dark frame, bright object, 40× over-exposure
        ("empty", False, 0.05, 0.006, None),
    ],
)
def test_recovers_the_planted_shading(kind, darkfield, outliers, ff_limit, df_limit):
    images, truth = stack(kind=kind, darkfield=darkfield, outlier_fraction=outliers)
    result = estimate_shading(images, darkfield=darkfield)
    rms, worst = relative_errors(result.flatfield.astype(np.float64), truth["flatfield"])
    assert rms <= ff_limit, f"flatfield error {rms:.2%}"
    assert worst <= 6 * ff_limit
    assert result.flatfield.dtype == np.float32 and result.flatfield.shape == images.shape[1:]
    assert result.flatfield.mean() == pytest.approx(1.0, abs=1e-4)
    if darkfield:
        d_rms = float(np.sqrt(np.mean((result.darkfield - truth["darkfield"]) ** 2)))
        assert d_rms <= df_limit, (
            f"darkfield error {d_rms:.2f} counts (truth mean {truth['darkfield'].mean():.1f})"
        )
    else:
        assert not result.darkfield.any()


def test_far_better_than_a_smoothed_mean_image():
    """The classic estimate — the per-pixel mean, offset removed with the true darkfield, smoothed —
    is several times worse than the estimator, which is not told the darkfield."""
    from scipy import ndimage as ndi

    images, truth = stack(kind="sparse", size=256, darkfield=True)
    naive = ndi.gaussian_filter(
        images.astype(np.float64).mean(axis=0) - truth["darkfield"], 256 * 0.02, mode="nearest"
    )
    naive_rms, _ = relative_errors(naive, truth["flatfield"])
    ours, _ = relative_errors(
        estimate_shading(images, darkfield=True).flatfield.astype(np.float64), truth["flatfield"]
    )
    assert ours * 3 < naive_rms, f"ours {ours:.2%}, smoothed mean {naive_rms:.2%}"


def test_baseline_follows_the_frame_brightness():
    images, truth = stack(kind="sparse", darkfield=False)
    result = estimate_shading(images)
    b = result.baseline / np.median(result.baseline)
    expected = truth["brightness"] / np.median(truth["brightness"])
    assert np.all(np.isfinite(result.baseline))
    # within 3 % over the ±15 % brightness range (dim frames come out slightly dimmer: the floor's noise)
    assert np.max(np.abs(b / expected - 1)) < 0.03
    assert np.corrcoef(b, expected)[0, 1] > 0.99


def test_saturated_spots_are_left_out():
    images, truth = stack(kind="sparse", darkfield=True, saturated_fraction=0.4)
    assert (images == 65535).any()
    rms, _ = relative_errors(
        estimate_shading(images, darkfield=True).flatfield.astype(np.float64), truth["flatfield"]
    )
    assert rms <= 0.015


def test_known_darkfield_is_subtracted_not_estimated():
    images, truth = stack(kind="sparse", darkfield=True)
    result = estimate_shading(images, known_darkfield=truth["darkfield"])
    rms, _ = relative_errors(result.flatfield.astype(np.float64), truth["flatfield"])
    assert rms <= 0.006
    assert np.allclose(result.darkfield, truth["darkfield"], atol=1e-3)
    # and ignoring a real offset is what makes default BaSiC fail: the error is an order of magnitude larger
    ignored, _ = relative_errors(estimate_shading(images).flatfield.astype(np.float64), truth["flatfield"])
    assert ignored > 5 * rms


def test_weight_mask_is_honoured():
    images, truth = stack(kind="sparse", darkfield=False)
    broken = images.copy()
    broken[:, :40, :40] = 3000  # a persistent artefact in every frame
    mask = np.ones(images.shape[1:], bool)
    mask[:48, :48] = False
    masked = estimate_shading(broken, mask=mask)
    # judged where there were data (the masked corner is an extrapolation of the polynomial)
    rms, _ = relative_errors(masked.flatfield[mask].astype(np.float64), truth["flatfield"][mask])
    assert rms <= 0.006
    unmasked = estimate_shading(broken)
    assert not np.allclose(unmasked.flatfield, masked.flatfield, atol=1e-3)


def test_deterministic_for_a_seed():
    images, _ = stack(kind="sparse", darkfield=True, n=80)
    settings = EstimateSettings(max_frames=40, chunk_frames=16, seed=5)
    a = estimate_shading(images, darkfield=True, settings=settings)
    b = estimate_shading(images, darkfield=True, settings=settings)
    assert np.array_equal(a.flatfield, b.flatfield) and np.array_equal(a.darkfield, b.darkfield)
    assert np.array_equal(a.baseline, b.baseline, equal_nan=True)
    other = estimate_shading(
        images, darkfield=True, settings=EstimateSettings(max_frames=40, chunk_frames=16, seed=6)
    )
    assert not np.array_equal(a.flatfield, other.flatfield)  # another sample of frames…
    assert np.allclose(a.flatfield, other.flatfield, atol=0.02)  # …and nearly the same answer


REPORTED: list[int] = []


def _count_frames(n: int) -> None:
    """Progress callback run by the (in-process) worker after each chunk."""
    REPORTED.append(n)


@pytest.fixture(scope="module")
def local_cluster():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.mark.parametrize("max_frames", [1000, 24], ids=["all-frames", "sample-then-statistics"])
def test_dask_path_equals_in_memory_path(local_cluster, max_frames):
    import dask.array as da

    from shadeflow.core.estimate.chunked import estimate_shading_dask

    images, _ = stack(kind="sparse", darkfield=True, outlier_fraction=0.05)
    # one method: the read count below is its
    settings = EstimateSettings(method="floor", max_frames=max_frames, chunk_frames=16)
    memory = estimate_shading(images, darkfield=True, settings=settings)
    client = local_cluster
    REPORTED.clear()

    def compute(*collections):
        return client.gather(client.compute(list(collections)))

    lazy = da.from_array(images, chunks=(7, 128, 128))  # chunks unlike the estimator's: it rechunks
    distributed = estimate_shading_dask(
        lazy, darkfield=True, settings=settings, compute=compute, report=_count_frames
    )
    assert np.array_equal(memory.flatfield, distributed.flatfield)
    assert np.array_equal(memory.darkfield, distributed.darkfield)
    assert np.array_equal(memory.baseline, distributed.baseline, equal_nan=True)
    assert memory.frames_rejected == distributed.frames_rejected
    # every frame read once, plus once more after a sample
    assert sum(REPORTED) == min(60, max_frames) + (60 if max_frames < 60 else 0)
