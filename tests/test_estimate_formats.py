"""``shadeflow estimate`` reads PNG frames, FITS files (every image extension a frame, as in a wide-field
camera's mosaic) and HDF5 datasets (issue 13, item 3). The same seeded stack written in each format
must read back as the same frames and give the same flatfield as from TIFF; bad files are named."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from shadeflow.core.estimate.chunked import estimate_shading_dask
from shadeflow.core.estimate.grid import EstimateError, relative_rms
from shadeflow.core.estimate.inputs import open_images
from shadeflow.core.synth.stacks import StackConfig, generate_stack

CONFIG = StackConfig(kind="sparse", size=64, n=30, darkfield=False, seed=7)


@pytest.fixture(scope="module")
def stack():
    frames, truth = generate_stack(CONFIG)
    return frames, truth


def write_png(folder, frames):
    from PIL import Image

    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{i:03d}.png")
    return folder


def write_fits(path, frames, per_file=None):
    """One file, a primary header without data, then one image extension per frame (a mosaic)."""
    from astropy.io import fits

    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(frame.astype(np.int32)) for frame in frames]
    fits.HDUList(hdus).writeto(path)
    return path


def write_hdf5(path, frames, dataset="/entry/data/data"):
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset(dataset, data=frames, chunks=(8, *frames.shape[1:]))
        h5.create_dataset("/entry/instrument/exposure", data=np.ones(3))  # not an image
    return path


@pytest.mark.parametrize("fmt", ["png", "fits", "hdf5"])
def test_each_format_reads_back_the_frames_and_gives_the_tiffs_flatfield(fmt, stack, tmp_path):
    frames, truth = stack
    written = {
        "png": lambda: write_png(tmp_path / "frames", frames),
        "fits": lambda: write_fits(tmp_path / "mosaic.fits", frames),
        "hdf5": lambda: write_hdf5(tmp_path / "scan.h5", frames),
    }[fmt]()
    opened = open_images([str(written)])
    assert (opened.kind, opened.n_frames, opened.shape) == (fmt, CONFIG.n, (CONFIG.size, CONFIG.size))
    np.testing.assert_array_equal(opened.channel(0).compute().astype(np.int64), frames.astype(np.int64))
    tifffile.imwrite(tmp_path / "frames.tif", frames)
    reference = estimate_shading_dask(open_images([str(tmp_path / "frames.tif")]).channel(0))
    found = estimate_shading_dask(opened.channel(0))
    assert relative_rms(found.flatfield, truth["flatfield"]) < 0.02
    np.testing.assert_allclose(found.flatfield, reference.flatfield, atol=1e-5 if fmt != "fits" else 1e-3)


def test_bad_files_and_datasets_are_named(stack, tmp_path):
    frames, _ = stack
    from PIL import Image

    Image.fromarray(np.dstack([frames[0].astype(np.uint8)] * 3)).save(tmp_path / "colour.png")
    with pytest.raises(EstimateError, match=r"PNG .*colour.png: a RGB image; give grayscale frames"):
        open_images([str(tmp_path / "colour.png")])
    (tmp_path / "broken.fits").write_bytes(b"SIMPLE  = garbage")
    with pytest.raises(EstimateError, match=r"FITS .*broken.fits cannot be read"):
        open_images([str(tmp_path / "broken.fits")])
    h5 = write_hdf5(tmp_path / "two.h5", frames)
    import h5py

    with h5py.File(h5, "a") as f:
        f.create_dataset("/other", data=frames[:3])
    with pytest.raises(EstimateError, match=r"holds 2 image datasets .*; name one with --dataset"):
        open_images([str(h5)])
    with pytest.raises(EstimateError, match=r"has no dataset 'nope'"):
        open_images([str(h5)], dataset="nope")
    assert open_images([str(h5)], dataset="/entry/data/data").n_frames == CONFIG.n
    with pytest.raises(EstimateError, match=r"--dataset names the frames inside an HDF5 file"):
        open_images([str(write_fits(tmp_path / "m.fits", frames[:3]))], dataset="/x")


def test_the_command_estimates_from_an_hdf5_dataset(stack, tmp_path, prefect_server):
    """The whole command (subprocess, Prefect run, Dask) on a detector stack named by ``--dataset``; the
    readers' other formats reach the same flow through ``open_images`` (above)."""
    from prefect.settings import PREFECT_API_URL
    from test_cli import clean_env, shadeflow

    frames, truth = stack
    scan = write_hdf5(tmp_path / "scan.h5", frames)
    env = clean_env(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"))
    run = shadeflow(
        "estimate", str(scan), "--dataset", "/entry/data/data", "--out", str(tmp_path / "est"),
        "--workers", "1", "--memory", "4GiB", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{CONFIG.n} frames" in run.stdout
    flat = tifffile.imread(tmp_path / "est" / "flatfield.tiff")
    assert relative_rms(flat, truth["flatfield"]) < 0.02
