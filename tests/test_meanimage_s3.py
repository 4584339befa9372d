"""The meanimage job on ``s3://`` slides, against an S3-compatible server (moto) on 127.0.0.1.

The flow runs in this process (Prefect test server) and, once, the ``shadeflow meanimage`` command
in a subprocess with its own ephemeral Prefect server, as a user would run it. Both must produce the
same stack as the serial reference computed on a local copy of the same seeded synthetic data.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import boto3
import numpy as np
import pytest

from shadeflow.core.io.slide import load_slide
from shadeflow.core.meanimage.outputs import read_mean_image_stack
from shadeflow.core.meanimage.pipeline import compute_mean_image, plan_slide
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.infra.cluster import task_runner

# small fields (128×168 px, 10 layers): S3 round trips through moto dominate the time
CONFIG = SynthConfig(slides=1, fields=12, shape=(128, 168, 10), seed=53)
SLIDE_ID = "SYN1_1"
ASTROPATH_FILES = (
    "{sid}-mean_image.bin",
    "{sid}-std_err_of_mean_image.bin",
    "{sid}-sum_images_squared.bin",
    "{sid}-mask_stack.bin",
    "{sid}-background_thresholds.csv",
    "{sid}-thresholding_data_table.csv",
    "{sid}-metadata_summary_thresholding_images.csv",
    "{sid}-metadata_summary_stacked_images.csv",
    "{sid}-thresholding_summary.pdf",
    "{sid}-masking_summary.pdf",
    "{sid}-meanimage_summary.pdf",
    "fields_used.csv",
    "image_masking/labelled_mask_regions.csv",
    "shadeflow.json",
)


def objects(endpoint: str, bucket: str, prefix: str = "") -> dict[str, tuple[int, str]]:
    """key → (size, ETag) of every object below ``prefix``."""
    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            out[item["Key"]] = (item["Size"], item["ETag"])
    return out


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The same seeded slide written locally and computed by the serial reference path."""
    root = tmp_path_factory.mktemp("s3-reference")
    (url,) = write_cohort(str(root), CONFIG)
    return compute_mean_image(plan_slide(load_slide(url)), str(root / "masks")).stack


def write_s3_slide(bucket: str) -> str:
    cohort = f"s3://{bucket}/cohort"
    (url,) = write_cohort(cohort, CONFIG)
    assert url == f"{cohort}/{SLIDE_ID}"
    return url


def check_s3_output(endpoint: str, bucket: str, inputs_before: dict, reference) -> None:
    """Every AstroPath file and the manifest exist, nothing is staged, inputs are unchanged, sums match."""
    h, w, n_layers = CONFIG.shape
    after = objects(endpoint, bucket)
    prefix = f"cohort/{SLIDE_ID}/meanimage/"
    outputs = {k[len(prefix) :]: size for k, (size, _) in after.items() if k.startswith(prefix)}
    for name in ASTROPATH_FILES:
        assert name.format(sid=SLIDE_ID) in outputs, name
    for name in ("mean_image", "std_err_of_mean_image", "sum_images_squared", "mask_stack"):
        assert outputs[f"{SLIDE_ID}-{name}.bin"] == h * w * n_layers * 8
    assert f"{SLIDE_ID}-meanimage.zarr/zarr.json" in outputs
    assert [k for k in after if ".meanimage.partial-" in k or ".tmp-" in k] == []
    assert {k: v for k, v in after.items() if not k.startswith(prefix)} == inputs_before

    client = boto3.client("s3", endpoint_url=endpoint)
    manifest = json.loads(client.get_object(Bucket=bucket, Key=prefix + "shadeflow.json")["Body"].read())
    assert manifest["kind"] == "meanimage"
    assert len(manifest["inputs"]) == CONFIG.fields
    assert all(u.startswith(f"s3://{bucket}/cohort/{SLIDE_ID}/fields/") for u in manifest["inputs"])
    assert manifest["files"] == {k: v for k, v in outputs.items() if k != "shadeflow.json"}

    stack, attrs = read_mean_image_stack(f"s3://{bucket}/cohort/{SLIDE_ID}")
    assert np.array_equal(stack.sum, reference.sum)
    assert np.array_equal(stack.sum_sq, reference.sum_sq)
    assert np.array_equal(stack.count, reference.count)
    assert np.array_equal(stack.n_images, reference.n_images)
    assert attrs["slide"]["slide_id"] == SLIDE_ID


@pytest.mark.usefixtures("prefect_server")
def test_flow_on_s3_slide(s3_server, s3_bucket, local_reference):
    url = write_s3_slide(s3_bucket)
    before = objects(s3_server, s3_bucket)
    flow = meanimage.with_options(task_runner=task_runner(memory="4GiB", workers=1))
    (report,) = flow(params=MeanImageParameters(slides=[url]))
    assert report["status"] == "written"
    assert report["output"] == f"{url}/meanimage"
    check_s3_output(s3_server, s3_bucket, before, local_reference)


def test_cli_on_s3_slide(s3_server, s3_bucket, local_reference, tmp_path):
    """``shadeflow meanimage s3://…`` in a fresh process: own ephemeral Prefect server, endpoint from the
    environment."""
    url = write_s3_slide(s3_bucket)
    before = objects(s3_server, s3_bucket)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "AWS_", "SHADEFLOW_", "CO_MEMORY"))
    }
    env.update(
        AWS_ENDPOINT_URL=s3_server,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_LOGGING_LEVEL="WARNING",
        DO_NOT_TRACK="1",
        COLUMNS="160",
    )
    result = subprocess.run(
        [sys.executable, "-m", "shadeflow", "meanimage", url, "--workers", "1", "--memory", "4GiB"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # a progress bar that reached its end, and where the output went
    bars = [
        line for line in result.stdout.splitlines() if "fields" in line and re.search(r"(\d+)/(\d+)", line)
    ]
    assert bars, result.stdout
    done, total = map(int, re.search(r"(\d+)/(\d+)", bars[-1]).groups())
    assert done == total >= CONFIG.fields, bars[-1]
    assert f"{url}/meanimage" in result.stdout
    assert "Traceback" not in result.stderr
    check_s3_output(s3_server, s3_bucket, before, local_reference)
