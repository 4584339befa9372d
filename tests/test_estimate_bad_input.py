"""Input the estimator cannot use: each case fails with a clear message naming the input and what was
expected."""

from __future__ import annotations

import os

import numpy as np
import pytest

from shadeflow.core.estimate.estimator import EstimateError, estimate_shading
from shadeflow.core.synth.stacks import StackConfig, generate_stack


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return generate_stack(StackConfig(kind="sparse", size=64, n=20, seed=1))[0]


def test_too_few_images_says_how_many(images):
    with pytest.raises(EstimateError, match=r"5 images; the estimator needs at least 8"):
        estimate_shading(images[:5])
    with pytest.raises(
        EstimateError, match=r"10 images; the estimator needs at least 16 to estimate a darkfield"
    ):
        estimate_shading(images[:10], darkfield=True)


def test_images_of_different_shapes(images):
    frames = list(images[:12])
    frames[7] = frames[7][:, :60]
    with pytest.raises(
        EstimateError, match=r"image 7 is 64×60 but image 0 is 64×64; all images must have one shape"
    ):
        estimate_shading(frames)


def test_not_a_stack():
    with pytest.raises(
        EstimateError, match=r"expected a stack \(N, H, W\), got an array of shape \(64, 64\)"
    ):
        estimate_shading(np.ones((64, 64)))


@pytest.mark.parametrize("value, what", [(0, "all zero"), (500, "constant \\(every value 500\\)")])
def test_constant_or_all_zero_stack(value, what):
    with pytest.raises(EstimateError, match=f"the stack is {what}; a flatfield cannot be estimated"):
        estimate_shading(np.full((12, 32, 32), value, np.uint16))


def test_non_finite_values_name_the_image(images):
    floats = images[:12].astype(np.float32)
    floats[9, 3, 4] = np.nan
    with pytest.raises(EstimateError, match=r"image 9 .*non-finite"):
        estimate_shading(floats)


@pytest.mark.parametrize("shape", [(64, 32), (3, 64, 64), (12, 64)])
def test_weight_mask_of_the_wrong_shape(images, shape):
    with pytest.raises(
        EstimateError,
        match=r"weight mask of shape .* does not match the images: expected \(64, 64\) .* or \(12, 64, 64\)",
    ):
        estimate_shading(images[:12], mask=np.ones(shape, bool))


def test_weight_mask_without_weight_or_with_negative_weights(images):
    with pytest.raises(EstimateError, match="zero everywhere"):
        estimate_shading(images[:12], mask=np.zeros((64, 64), bool))
    with pytest.raises(EstimateError, match="negative"):
        estimate_shading(images[:12], mask=-np.ones((64, 64)))


def test_images_too_small():
    with pytest.raises(
        EstimateError,
        match=r"images of 4×64 px are too small: the estimator needs at least 8 px along each side",
    ):
        estimate_shading(np.random.default_rng(0).integers(1, 100, (12, 4, 64)).astype(np.uint16))


def test_images_without_light_above_the_darkfield(images):
    with pytest.raises(EstimateError, match=r"hold light above the darkfield"):
        estimate_shading(images[:12], known_darkfield=60000.0)


def test_known_and_estimated_darkfield_together(images):
    with pytest.raises(EstimateError, match="not both"):
        estimate_shading(images, darkfield=True, known_darkfield=100.0)


# ---------------------------------------------------------------------------------------------
# files


def _tiff(path, array) -> None:
    import tifffile

    tifffile.imwrite(path, array)


def test_tiff_inputs_of_different_shapes_name_both_files(tmp_path, images):
    from shadeflow.core.estimate.inputs import open_images

    _tiff(tmp_path / "a.tif", images[:10])
    _tiff(tmp_path / "b.tif", images[:10, :, :48])
    with pytest.raises(
        EstimateError, match=r"images of different shapes: .*b.tif is 64×48 but .*a.tif is 64×64"
    ):
        open_images([str(tmp_path)])


def test_a_tiff_whose_pages_differ_in_shape_is_named_before_reading(tmp_path, images):
    """Issue 11, defect 9: a TIFF with mixed page shapes named no file (a stacking error mid-run)."""
    import tifffile

    from shadeflow.core.estimate.inputs import open_images

    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for page in images[:9]:
            tif.write(page)
        tif.write(images[9, :, :48])
    with pytest.raises(
        EstimateError, match=r"TIFF .*mixed.tif: page 9 is \(64, 48\) .* but page 0 is \(64, 64\)"
    ):
        open_images([str(tmp_path / "mixed.tif")])


def test_pages_that_do_not_divide_into_channels(tmp_path, images):
    from shadeflow.core.estimate.inputs import open_images

    _tiff(tmp_path / "a.tif", images[:9])
    with pytest.raises(EstimateError, match=r"has 9 pages, not a multiple of --channels 2"):
        open_images([str(tmp_path / "a.tif")], channels=2)


def test_missing_input_and_mixed_kinds(tmp_path, images):
    import zarr

    from shadeflow.core.estimate.inputs import open_images

    with pytest.raises(EstimateError, match=r"input .*nothing.tif: does not exist"):
        open_images([str(tmp_path / "nothing.tif")])
    _tiff(tmp_path / "a.tif", images[:10])
    zarr.create_array(store=str(tmp_path / "s.zarr"), data=images)
    with pytest.raises(EstimateError, match="give one kind of input per run"):
        open_images([str(tmp_path / "a.tif"), str(tmp_path / "s.zarr")])


def test_zarr_group_needs_a_component(tmp_path, images):
    import zarr

    from shadeflow.core.estimate.inputs import open_images

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=images)
    group.create_array("other", data=images[:2])
    with pytest.raises(EstimateError, match=r"holds 2 arrays \(other, raw\); name one with --component"):
        open_images([str(tmp_path / "g.zarr")])
    with pytest.raises(EstimateError, match=r"has no array 'missing'"):
        open_images([str(tmp_path / "g.zarr")], component="missing")
    assert open_images([str(tmp_path / "g.zarr")], component="raw").n_frames == 20


def test_unreadable_tiff(tmp_path):
    from shadeflow.core.estimate.inputs import open_images

    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(EstimateError, match=r"TIFF .*broken.tif cannot be read"):
        open_images([str(tmp_path / "broken.tif")])


def test_existing_output_is_not_overwritten_silently(tmp_path, images):
    from shadeflow.core.estimate.outputs import output_state

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")
    with pytest.raises(
        FileExistsError,
        match=r"is not a shadeflow estimate; remove it, choose another --out, or rerun with --overwrite",
    ):
        output_state(str(tmp_path / "out"), {}, [], overwrite=False)
    assert output_state(str(tmp_path / "out"), {}, [], overwrite=True) == "replace"
    assert os.path.exists(tmp_path / "out" / "precious.txt")  # deciding writes nothing
    assert output_state(str(tmp_path / "new"), {}, [], overwrite=False) == "write"


def test_command_rejects_bad_parameters_before_running(tmp_path, images):
    from shadeflow.flows.estimate import estimate_command

    with pytest.raises(ValueError, match=r"--channels 0: Input should be greater than or equal to 1"):
        estimate_command(images=[str(tmp_path)], out=str(tmp_path / "out"), channels=0)
    with pytest.raises(EstimateError, match=r"input .*missing: does not exist"):
        estimate_command(images=[str(tmp_path / "missing")], out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
