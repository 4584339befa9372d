"""The ``shadeflow`` command line.

Commands that run a flow are started as real subprocesses (``python -m shadeflow``). To keep the
suite fast they talk to this session's Prefect test server (``PREFECT_API_URL``) instead of each
starting an ephemeral one; ``tests/test_meanimage_s3.py`` runs the command once with its own
ephemeral server, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import tree
from typer.testing import CliRunner

from shadeflow.flows.cli import app

HEAVY_MODULES = ("prefect", "prefect_dask", "dask", "distributed", "numpy", "zarr", "matplotlib", "scipy")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect, AWS and shadeflow settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "SHADEFLOW_", "CO_MEMORY", "AWS_ENDPOINT_URL"))
    }
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", COLUMNS="160", **extra)
    return env


def shadeflow(*args: str, env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shadeflow", *args],
        env=env or clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def test_server_env(prefect_server, tmp_path) -> dict[str, str]:
    """Environment for a subprocess that uses this session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness did not set an API URL"
    return clean_env(PREFECT_API_URL=url, PREFECT_HOME=str(tmp_path / "prefect-home"))


# ----------------------------------------------------------------------------------------------
# help and lazy imports


def test_help_lists_the_commands():
    result = shadeflow("--help")
    assert result.returncode == 0, result.stderr
    for command in ("meanimage", "model", "applied-test", "correct", "estimate", "synth", "demo"):
        assert command in result.stdout, command


def test_cli_module_and_help_import_nothing_heavy():
    """``--help`` is instant because the CLI module imports neither Prefect nor the array stack."""
    code = (
        "import json, sys\n"
        "import shadeflow.flows.cli as cli\n"
        f"heavy = {HEAVY_MODULES!r}\n"
        "after_import = [m for m in heavy if m in sys.modules]\n"
        "sys.argv = ['shadeflow', '--help']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "after_help = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps({'import': after_import, 'help': after_help}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"import": [], "help": []}


# ----------------------------------------------------------------------------------------------
# synth


def synth(out, *args: str):
    result = CliRunner().invoke(app, ["synth", "slides", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return result


def test_synth_slides_writes_the_slide_contract_reproducibly(tmp_path):
    args = ("--slides", "1", "--fields", "12", "--shape", "64", "80", "5")
    synth(tmp_path / "a", *args, "--seed", "3")
    synth(tmp_path / "b", *args, "--seed", "3")
    synth(tmp_path / "c", *args, "--seed", "4")

    slide = tmp_path / "a" / "SYN1_1"
    meta = json.loads((slide / "slide.json").read_text())
    assert meta["shape"] == [64, 80, 5]
    assert meta["slide_id"] == "SYN1_1"
    rows = (slide / "fields.csv").read_text().splitlines()
    assert len(rows) == 1 + 12
    fields = sorted(os.listdir(slide / "fields"))
    assert len(fields) == 12
    assert all(os.path.getsize(slide / "fields" / f) == 64 * 80 * 5 * 2 for f in fields)
    assert os.path.getsize(tmp_path / "a" / "synthetic_truth" / "flatfield.bin") == 64 * 80 * 5 * 8

    # the same seed gives the same bytes; another seed does not
    a, b, c = (tree(tmp_path / x) for x in "abc")
    assert a == b
    field_files = [k for k in a if k.endswith(".Data.dat")]
    assert field_files and all(a[k] != c.get(k) for k in field_files)


def test_synth_accepts_the_vectra_shape(tmp_path, monkeypatch):
    """``--shape 1004 1344 35`` (a Vectra field) parses into the config AstroPath's data has.

    Only the parsing is checked: generating Vectra-sized fields takes seconds each.
    """
    import shadeflow.core.synth.slides as synth_module

    seen = []
    monkeypatch.setattr(
        synth_module,
        "write_cohort",
        lambda out, config, workers=2, layout="shadeflow": seen.append((out, config)) or [],
    )
    synth(tmp_path, "--slides", "2", "--fields", "5", "--shape", "1004", "1344", "35", "--seed", "9")
    ((out, config),) = seen
    assert out == str(tmp_path)
    assert (config.slides, config.fields, config.shape, config.seed) == (2, 5, (1004, 1344, 35), 9)
    assert config.microscope == "vectra"
    assert config.pixel_um == pytest.approx(0.4976)  # AstroPath's native pixel size
    groups = synth_module.synthetic_layer_groups(config.shape[2])
    assert groups == {
        "dapi": [1, 9],
        "fitc": [10, 18],
        "cy3": [19, 25],
        "texasred": [26, 32],
        "cy5": [33, 35],
    }


def test_synth_rejects_a_bad_shape(tmp_path):
    result = CliRunner().invoke(app, ["synth", "slides", "--out", str(tmp_path), "--shape", "16", "80", "5"])
    assert result.exit_code != 0
    assert "16x80" in result.output
    assert not os.path.exists(tmp_path / "SYN1_1")


# ----------------------------------------------------------------------------------------------
# meanimage


def test_meanimage_rejects_a_bad_memory_setting(tmp_path):
    result = shadeflow("meanimage", str(tmp_path / "SYN1_1"), "--memory", "banana", cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "--memory" in errors[0] and "banana" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_meanimage_on_a_missing_folder_is_a_one_line_error(tmp_path, test_server_env):
    missing = tmp_path / "cohort" / "NOPE_7"
    result = shadeflow(
        "meanimage", str(missing), "--workers", "1", "--memory", "4GiB", env=test_server_env, cwd=tmp_path
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "NOPE_7" in errors[0] and "slide.json" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert not os.path.exists(missing)


# A successful run's progress bar ("N/N fields") and output path are checked on the one subprocess
# run that starts its own ephemeral Prefect server: tests/test_meanimage_s3.py::test_cli_on_s3_slide.
