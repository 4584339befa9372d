"""The cohort refresh: mean images of a cohort's slides, then a model version built from them.

This is what the nightly schedule runs. Both steps are the ordinary flows, run as subflows, so each
gets its own cluster and shows up in the UI as its own run; the model is built only after every
slide's mean image is there (a failed slide stops the refresh before the model).
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from .meanimage import MeanImageParameters, meanimage
from .model import ModelBuildParameters, model_build


class CohortRefreshParameters(BaseModel):
    """Mean images of a cohort's slides, then the model version built from them."""

    meanimage: MeanImageParameters = Field(
        description="The slides whose mean images are computed (finished slides are skipped)"
    )
    model: ModelBuildParameters = Field(
        description="The model version built afterwards; set overwrite to rebuild it on every refresh"
    )


@flow(name="cohort-refresh", log_prints=True)
def cohort_refresh(params: CohortRefreshParameters) -> dict:
    """Mean images of the cohort's slides, then the model version the models CSV defines from them."""
    reports = meanimage(params.meanimage)
    model = model_build(params.model)
    return {"meanimage": reports, "model": model}
