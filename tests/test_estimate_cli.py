"""``shadeflow synth stack`` and ``shadeflow estimate`` as a user runs them (real subprocesses)."""

from __future__ import annotations

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
