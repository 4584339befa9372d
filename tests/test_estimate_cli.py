"""``shadeflow synth stack`` and ``shadeflow estimate`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from test_cli import clean_env, shadeflow


@pytest.fixture
def server_env(prefect_server, tmp_path) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return clean_env(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"))


def test_synth_stack_then_estimate_recovers_the_planted_shading(tmp_path, server_env):
    made = shadeflow(
        "synth",
        "stack",
        "--out",
        str(tmp_path / "st"),
        "--kind",
        "sparse",
        "--size",
        "128",
        "--frames",
        "40",
        "--format",
        "tiff",
        "--seed",
        "3",
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "sparse-128-n40-dark" in made.stdout
    assert len(list((tmp_path / "st" / "images").glob("frame_*.tif"))) == 40

    run = shadeflow(
        "estimate",
        str(tmp_path / "st" / "images"),
        "--out",
        str(tmp_path / "est"),
        "--darkfield",
        "--workers",
        "1",
        "--memory",
        "4GiB",
        env=server_env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "40 frames" in run.stdout and "flatfield.tiff, darkfield.tiff, estimate.zarr" in run.stdout

    flat = tifffile.imread(tmp_path / "est" / "flatfield.tiff")
    dark = tifffile.imread(tmp_path / "est" / "darkfield.tiff")
    assert flat.dtype == np.float32 and dark.dtype == np.float32 and flat.shape == (128, 128)
    truth_flat = np.load(tmp_path / "st" / "truth" / "flatfield.npy")
    truth_dark = np.load(tmp_path / "st" / "truth" / "darkfield.npy")
    assert np.sqrt(np.mean((flat / truth_flat - 1) ** 2)) < 0.02
    assert np.sqrt(np.mean((dark - truth_dark) ** 2)) < 10  # counts, of a ≈100-count darkfield


def test_estimate_on_a_missing_input_is_a_one_line_error(tmp_path):
    run = shadeflow("estimate", str(tmp_path / "nope"), "--out", str(tmp_path / "est"), cwd=tmp_path)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nope" in errors[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (tmp_path / "est").exists()


def test_synth_stack_rejects_an_unknown_kind(tmp_path):
    run = shadeflow("synth", "stack", "--out", str(tmp_path / "st"), "--kind", "galaxy", cwd=tmp_path)
    assert run.returncode != 0 and "galaxy" in run.stderr and "tissue" in run.stderr
    assert not (tmp_path / "st").exists()


def test_a_known_camera_offset_is_subtracted_instead_of_folded_into_the_flatfield(tmp_path, server_env):
    """Tissue frames on a flat 300-count camera offset: fitted flatfield-only, the offset folds into the
    flatfield (8.8 % off, with a note saying so, in-process); given with ``--camera-offset`` it is
    subtracted first (0.6 %). The output records the offset as its darkfield and parameter."""
    from shadeflow.core.estimate.outputs import read_estimate
    from shadeflow.core.synth.stacks import StackConfig, generate_stack

    images, truth = generate_stack(
        StackConfig(kind="tissue", size=96, n=40, darkfield=False, seed=5), workers=1
    )
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(images):
        tifffile.imwrite(folder / f"f{i:02d}.tif", (frame.astype(np.int32) + 300).astype(np.uint16))
    run = shadeflow(
        "estimate", str(folder), "--out", str(tmp_path / "est"), "--camera-offset", "300", "--workers", "1",
        env=server_env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "note:" not in run.stdout  # none that an offset was folded in
    found = read_estimate(str(tmp_path / "est"))
    assert (
        np.sqrt(np.mean((found["flatfield"][0] / found["flatfield"][0].mean() - truth["flatfield"]) ** 2))
        < 0.015
    )
    assert np.all(found["darkfield_tiff"] == 300)
    assert '"camera_offset": 300.0' in json.dumps(found["attrs"])
