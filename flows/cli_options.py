"""Command-line options made from a job's parameters, so that each is declared once.

A job's pydantic model (:mod:`shadeflow.flows.parameters`) holds every option's name, type, default,
bounds and help; :func:`job_command` turns its fields into typer options (``--field-name``, or what the
field's ``cli`` entry says) and hands the command the values by field name. Bounds and choices are
checked by the model itself (:func:`shadeflow.core.errors.checked_parameters`), so a value out of
range gets the same message on the command line as in the Prefect UI.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

#: the cluster settings every job takes besides its parameters (not part of a run's parameters: the
#: Prefect UI's runs take them from the work pool or the environment)
CLUSTER_OPTIONS: dict[str, tuple[Any, Any]] = {
    "workers": (
        int | None,
        typer.Option(None, "--workers", min=1, help="Dask workers (default: one worker, a thread per CPU)"),
    ),
    "memory": (
        str | None,
        typer.Option(
            None,
            "--memory",
            help="Memory for the cluster, e.g. 16GiB (default: SHADEFLOW_MEMORY, CO_MEMORY or the machine's)",
        ),
    ),
}


def _plain_type(annotation: Any) -> tuple[Any, tuple | None]:
    """The type typer parses a field as, and the field's choices (for ``Literal`` fields)."""
    optional = False
    if typing.get_origin(annotation) in (types.UnionType, typing.Union):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        (annotation,) = members
    choices = None
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        annotation = type(choices[0])
    return (annotation | None if optional else annotation), choices


def _help(field: FieldInfo, choices: tuple | None) -> str:
    text = field.description or ""
    if choices:
        text += f" [{'|'.join(str(c) for c in choices)}]"
    return text


def cli_parameter(name: str, field: FieldInfo) -> tuple[Any, Any]:
    """The typer parameter of one field: its type and its ``typer.Option`` / ``typer.Argument``."""
    annotation, choices = _plain_type(field.annotation)
    where = (field.json_schema_extra or {}).get("cli") if isinstance(field.json_schema_extra, dict) else None
    default = ... if field.is_required() else field.default
    help_text = _help(field, choices)
    if where == "argument":
        return annotation, typer.Argument(default, help=help_text, show_default=False)
    flag = where or "--" + name.replace("_", "-")
    return annotation, typer.Option(default, flag, help=help_text)


def job_command(
    group: typer.Typer, name: str, model: type[BaseModel], summary: str | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``run(values, memory, workers)`` as the command ``name`` of ``group``, with an option per
    field of ``model`` plus the cluster settings; ``values`` are the fields' values by name."""

    def register(run: Callable[..., None]) -> Callable[..., None]:
        parameters, annotations = [], {}
        options = {n: cli_parameter(n, f) for n, f in model.model_fields.items()}
        for pname, (annotation, default) in {**options, **CLUSTER_OPTIONS}.items():
            parameters.append(
                inspect.Parameter(
                    pname, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                )
            )
            annotations[pname] = annotation

        @functools.wraps(run)
        def command(**given: Any) -> None:
            cluster = {k: given.pop(k) for k in CLUSTER_OPTIONS}
            run(given, **cluster)

        command.__signature__ = inspect.Signature(parameters)
        command.__annotations__ = annotations
        command.__doc__ = summary or model.__doc__
        del command.__wrapped__  # typer must read the signature above, not the runner's
        group.command(name)(command)
        return run

    return register
