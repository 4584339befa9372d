"""Each job's parameters are declared once (issue 12, item 3): the pydantic model the Prefect UI renders
is what the command line's options and the core's inputs are made from."""

from __future__ import annotations

import dataclasses

import click
import pytest
import typer.main
from typer.testing import CliRunner

from shadeflow.core.correct.tile import CorrectRequest
from shadeflow.core.estimate.estimator import EstimateSettings
from shadeflow.core.model.compare import DEFAULT_BAND
from shadeflow.flows.cli import app
from shadeflow.flows.cli_options import CLUSTER_OPTIONS
from shadeflow.flows.parameters import JOBS, CorrectParameters, EstimateParameters, ModelCompareParameters


def command(path: str) -> click.Command:
    group = typer.main.get_command(app)
    for word in path.split():
        group = group.commands[word]
    return group


@pytest.mark.parametrize("path", JOBS)
def test_the_commands_options_are_the_models_fields(path):
    model = JOBS[path]
    params = {p.name: p for p in command(path).params}
    assert set(params) == set(model.model_fields) | set(CLUSTER_OPTIONS)
    for name, field in model.model_fields.items():
        param = params[name]
        assert param.help.startswith(field.description)  # the model's help, word for word
        assert param.required == field.is_required()
        if not field.is_required():
            assert param.default == field.default


def test_a_value_out_of_range_is_refused_by_the_model_with_the_options_name():
    runner = CliRunner()
    result = runner.invoke(app, ["estimate", "x.tif", "--out", "o", "--degree", "40"])
    assert result.exit_code == 2
    assert "--degree 40: Input should be less than or equal to 12" in result.output


def _defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


@pytest.mark.parametrize(
    "core, model", [(EstimateSettings, EstimateParameters), (CorrectRequest, CorrectParameters)]
)
def test_the_cores_defaults_are_the_models(core, model):
    """Core functions keep defaults of their own for library use; where a name is shared, the values agree,
    so a run from the UI, the command line or a script computes the same thing."""
    shared = _defaults(core).keys() & model.model_fields.keys()
    assert shared
    assert {n: _defaults(core)[n] for n in shared} == {n: model.model_fields[n].default for n in shared}
    assert (
        ModelCompareParameters.model_fields["band_low"].default,
        ModelCompareParameters.model_fields["band_high"].default,
    ) == DEFAULT_BAND


def test_the_cores_inputs_are_taken_by_name(tmp_path):
    params = CorrectParameters(tiles=["t.ome.zarr"], out=str(tmp_path), flatfield="f.tif", levels=3)
    request = params.request()
    assert {f.name for f in dataclasses.fields(CorrectRequest)} == set(type(params).model_fields) - {"tiles"}
    assert (request.flatfield, request.levels, request.background) == ("f.tif", 3, "estimate")
    settings = EstimateParameters(images=["x"], out="o", degree=4, darkfield_degree=9, seed=3).settings()
    assert (settings.degree, settings.darkfield_degree, settings.seed) == (4, 4, 3)
