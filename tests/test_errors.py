"""One failure convention (issue 12, item 4): every bad-input error of every job is an ``InputError``,
failed units of a run are named once by one function, and a job's parameters that do not validate are
one ``--option: problem`` line."""

from __future__ import annotations

import pickle

import pytest
from pydantic import BaseModel, Field

from shadeflow.core.correct.background import BackgroundError
from shadeflow.core.correct.flatfield_sources import FlatfieldError
from shadeflow.core.errors import InputError, checked_parameters, is_transient, one_line, unit_failures
from shadeflow.core.estimate.grid import EstimateError
from shadeflow.core.io.omezarr import TileError
from shadeflow.core.io.slide import SlideError
from shadeflow.core.model.models_csv import ModelError
from shadeflow.deployments.serve import ServeError
from shadeflow.infra.sizing import SettingsError

JOB_ERRORS = [
    SlideError,
    ModelError,
    TileError,
    FlatfieldError,
    BackgroundError,
    EstimateError,
    SettingsError,
    ServeError,
]


@pytest.mark.parametrize("kind", JOB_ERRORS, ids=lambda k: k.__name__)
def test_every_jobs_input_error_is_an_input_error(kind):
    error = kind("slide S1: fields.csv row 3: field image missing")
    assert isinstance(error, InputError) and isinstance(error, ValueError)
    assert not is_transient(error)
    assert one_line(error) == "slide S1: fields.csv row 3: field image missing"
    again = pickle.loads(pickle.dumps(error))  # raised on a worker, it comes back by pickle
    assert type(again) is kind and str(again) == str(error)


def test_input_error_names_input_problem_and_hint():
    error = InputError("--out s3://x", "bucket 'x' does not exist", "create it")
    assert str(error) == "--out s3://x: bucket 'x' does not exist; create it"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def test_failed_units_are_named_once_with_the_reason_out_of_the_task_state():
    message = unit_failures(
        "tile",
        [
            (
                "/data/a.ome.zarr",
                "Task run encountered an exception TileError: tile /data/a.ome.zarr: not 5-D",
            ),
            ("/data/b.ome.zarr", "Task run encountered an exception OSError: disk full\n(simulated)"),
            ("/data/c.ome.zarr", None),
        ],
    )
    assert message == (
        "tile /data/a.ome.zarr: not 5-D; tile /data/b.ome.zarr: disk full (simulated); "
        "tile /data/c.ome.zarr: failed"
    )
    assert unit_failures("", [("channel 1", "Task run encountered an exception ValueError: empty")]) == (
        "channel 1: empty"
    )


class _Parameters(BaseModel):
    levels: int = Field(1, ge=1)
    out: str


def test_parameters_that_do_not_validate_are_one_input_error_line():
    assert checked_parameters(_Parameters, levels=2, out="x").levels == 2
    with pytest.raises(InputError) as info:
        checked_parameters(_Parameters, levels=0)
    assert "\n" not in str(info.value)
    assert "--levels 0: Input should be greater than or equal to 1" in str(info.value)
    assert "--out: Field required" in str(info.value)
