"""``shadeflow estimate --background mesh`` (issue 13, items 3 and 6): each frame's SExtractor-style mesh
background (photutils Background2D) finds the stars, which get no weight; the shading is fitted from the
sky between them. Synthetic star fields (``core.synth.starfield``) with a planted flatfield and darkfield
are the truth."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_errors import expect_error, frames  # noqa: F401 — the fixture is used by name
from test_estimate_formats import write_fits

from shadeflow.core.estimate.chunked import estimate_shading_dask
from shadeflow.core.estimate.grid import EstimateError, relative_rms
from shadeflow.core.estimate.inputs import open_images
from shadeflow.core.estimate.mesh_background import mesh_background, source_mask
from shadeflow.core.synth.starfield import StarField, star_field_stack
from shadeflow.core.synth.sweep import radial_falloff, tilted
from shadeflow.flows.parameters import EstimateParameters

BOX = 32


def relative_error(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS and mean of found/truth − 1 at least one box from the edges: beyond the outermost box centres
    the map is extrapolated, which the fit does not rely on (it uses the map only to find stars)."""
    inner = (slice(BOX, -BOX), slice(BOX, -BOX))
    r = found[inner] / truth[inner] - 1
    return float(np.sqrt(np.mean(r**2))), float(np.mean(r))


def test_the_mesh_background_of_a_star_field_is_the_planted_sky_and_leaves_unbiased_sky_pixels():
    """The planted background of frame i is sky_i·S + D (a tilted flatfield, a darkfield ramp). On a
    50-count sky with 5 stars per 1000 px², the box medians' noise is ≈ 1.25·σ/32 ≈ 0.2 % of the
    background, and stars fainter than the 3σ clip still lift it by 0.5–0.8 % (measured on two seeds):
    1 % RMS per frame is that with a margin. The same mesh without sigma clipping is 1.1–2.1 % off per
    frame (1.5 % on average here), so the bound tells the two apart. The sky pixels the fit keeps
    (outside ``source_mask``) must average to the planted background within 0.5 % — what the
    estimator's accuracy rests on — where all pixels together are lifted by the stars by over 2 %."""
    from photutils.background import Background2D

    shape = (256, 256)
    flat = tilted(shape, 0.7, 0.8, 0.0)
    flat /= flat.mean()
    dark = 100.0 + 20 * np.linspace(-1, 1, shape[0])[:, None]
    images, skies = star_field_stack(StarField(frames=3, shape=shape, density=5, sky=50, seed=1), flat, dark)
    unclipped = []
    for frame, sky in zip(images, skies):
        truth = sky * flat + dark
        background, noise = mesh_background(frame, BOX)
        rms, _ = relative_error(background, truth)
        assert rms < 0.01, f"mesh background {rms:.2%} RMS off the planted sky"
        assert np.median(noise) == pytest.approx(np.sqrt(sky + 25), rel=0.15)  # Poisson + 5-count read noise
        unclipped.append(relative_error(Background2D(frame, BOX, sigma_clip=None).background, truth)[0])

        sky_pixels = ~source_mask(frame, BOX)
        assert 0.5 < sky_pixels.mean() < 0.99  # stars were found, most of the frame is sky
        bias = float(np.mean((frame - truth)[sky_pixels]) / np.mean(truth[sky_pixels]))
        everything = float(np.mean(frame - truth) / np.mean(truth))
        assert abs(bias) < 0.005 and everything > 0.02
    assert np.mean(unclipped) > 0.01, "the bound does not tell a clipped mesh from an unclipped one"


def test_estimate_with_a_mesh_background_recovers_a_planted_flatfield_from_fits_star_fields(tmp_path):
    """24 frames of 128² read from a multi-extension FITS file, settings from the command's parameters,
    the Dask estimator the flow runs (a 16-frame sample, then the final pass over all 24: both chunk
    paths find stars). A radial fall-off to 60 % in the corners; on three seeds the mesh fit was 0.24–
    0.32 % off (the default 0.32–0.45 %), photon noise alone allows ≈ 0.1 %: 0.6 % is twice the worst."""
    shape = (128, 128)
    flat = radial_falloff(shape, 0.03, -0.02, 0.6)
    flat /= flat.mean()
    images, _ = star_field_stack(StarField(frames=24, shape=shape, density=4, sky=100, seed=0), flat)
    path = write_fits(tmp_path / "stars.fits", np.round(images))
    stack = open_images([str(path)])
    params = EstimateParameters(
        images=[str(path)], out=str(tmp_path / "est"), background="mesh", max_frames=16
    )
    settings = params.settings()
    assert settings.background == "mesh" and params.recorded()["background"] == "mesh"

    result = estimate_shading_dask(stack.channel(0), settings=settings)
    error = relative_rms(result.flatfield, flat)
    assert error < 0.006, f"flatfield {error:.2%} off"
    assert result.diagnostics["background"] == "mesh" and "Background2D" in result.diagnostics["method"]
    assert result.diagnostics["mesh_box_px"] == 16  # 1/8 of 128
    assert 0.5 < result.diagnostics["sky_share"] < 0.99
    assert result.frames_used == 24


def test_a_mesh_box_too_large_for_the_images_is_refused_by_the_estimator():
    images = np.random.default_rng(0).poisson(100, (10, 32, 32)).astype(np.float32)
    params = EstimateParameters(images=["x"], out="y", background="mesh", mesh_box=20)
    import dask.array as da

    with pytest.raises(EstimateError, match=r"--mesh-box 20 .*32×32"):
        estimate_shading_dask(da.from_array(images), settings=params.settings())


@pytest.mark.parametrize(
    "option, named",
    [
        (["--background", "stars"], "--background stars"),
        (["--background", "mesh", "--mesh-box", "1"], "--mesh-box"),
    ],
)
def test_a_bad_background_option_is_one_line(tmp_path, frames, option, named):  # noqa: F811
    line = expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(tmp_path / "est"), *option],
        named,
        absent=[tmp_path / "est"],
        light=False,
    )
    assert "mesh" in line or ">= 4" in line
