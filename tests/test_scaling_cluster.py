"""meanimage and correct on a multi-process cluster write what the in-process cluster writes (issue 14,
item 4).

Tiny inputs (one slide of 16 small fields, two small tiles); the flows run in this process, first on the
in-process cluster (the reference), then with ``SHADEFLOW_CLUSTER`` naming a Dask scheduler with two
single-thread worker processes on 127.0.0.1, as a user points runs at an existing scheduler. Every output
file must be identical (time stamps and PDF bytes aside). Speed is ``bench/scaling.py``'s business.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from distributed import Client

from shadeflow.core.io.output_digest import differing, output_digest
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.core.synth.tiles import SynthTileConfig, flatfield_truth_url, write_synthetic_tile
from shadeflow.flows.correct import correct
from shadeflow.flows.meanimage import meanimage
from shadeflow.flows.parameters import CorrectParameters, MeanImageParameters

sys.path.insert(0, str(Path(__file__).parent / "faults"))
from fault_support import dask_processes, prefect_env  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A tiny cohort and two tiny tiles (one planted flatfield), no outputs; each run works on a copy."""
    root = tmp_path_factory.mktemp("scaling-inputs")
    write_cohort(str(root / "cohort"), SynthConfig(slides=1, fields=16, seed=4, shape=(96, 128, 4)))
    for i in range(2):
        config = SynthTileConfig(shape=(16, 128, 128), chunks=(8, 64, 64), seed=i)
        write_synthetic_tile(str(root / "tiles" / f"tile{i}.ome.zarr"), config)
    return root


def run_both(pristine: Path, work: Path) -> dict[str, str]:
    """meanimage and correct on a fresh copy of the inputs at ``work`` (the same path every run: outputs
    record their inputs' paths); the digests of every output file."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    slides = sorted(str(p) for p in (work / "cohort").iterdir() if (p / "slide.json").exists())
    tiles = sorted(str(p) for p in (work / "tiles").glob("*.ome.zarr"))
    meanimage(MeanImageParameters(slides=slides))
    correct(
        CorrectParameters(
            tiles=tiles,
            out=str(work / "corrected"),
            flatfield=flatfield_truth_url(tiles[0]),
            background="100",
        )
    )
    digests = {f"corrected/{k}": v for k, v in output_digest(work / "corrected").items()}
    for slide in slides:
        name = Path(slide).name
        digests.update(
            {f"{name}/meanimage/{k}": v for k, v in output_digest(Path(slide) / "meanimage").items()}
        )
    return digests


def test_two_worker_processes_write_what_the_in_process_cluster_writes(pristine, tmp_path, monkeypatch):
    monkeypatch.delenv("SHADEFLOW_CLUSTER", raising=False)
    work = tmp_path / "run"
    reference = run_both(pristine, work)
    assert any(k.startswith("corrected/") and k.endswith("/shadeflow.json") for k in reference)
    assert "SYN1_1/meanimage/shadeflow.json" in reference

    with dask_processes(tmp_path / "dask", prefect_env(tmp_path), workers=2) as dask:
        assert dask.worker_count() == 2
        monkeypatch.setenv("SHADEFLOW_CLUSTER", dask.address)
        on_processes = run_both(pristine, work)
        with Client(dask.address, timeout=20) as client:  # the work went to both worker processes
            # a lambda travels by value (this module is not importable on the workers)
            executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
        assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed

    assert not (diff := differing(on_processes, reference)), diff
