"""``correct`` with S3 input and output through a proxy that disturbs a seeded share of requests
(503 SlowDown or a TCP reset before forwarding, GET bodies cut off halfway, slow answers) writes
what a direct run writes."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest
from correct_support import make_tile
from fault_support import content_digest, prefect_env, run_shadeflow, tail
from faulty_proxy import faulty_proxy

pytestmark = pytest.mark.usefixtures("prefect_server")

SEED = 5
RUN_TIMEOUT = 300


def s3_digest(endpoint: str, bucket: str, prefix: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            data = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            out[o["Key"][len(prefix) :]] = content_digest(o["Key"], data)
    return out


def run(args: list[str], env: dict[str, str], log: Path) -> int:
    return run_shadeflow(args, env, log, RUN_TIMEOUT)


def test_correct_through_a_faulty_s3_proxy_matches_a_direct_run(s3_server, s3_bucket, tmp_path):
    root = f"s3://{s3_bucket}"
    tile, _ = make_tile(f"{root}/in", "tile.ome.zarr", shape=(16, 128, 128), chunks=(4, 64, 64), seed=SEED)
    flat = tmp_path / "flat.npy"
    y, x = np.mgrid[0:128, 0:128]
    np.save(flat, (1.0 - 0.1 * ((y - 64) ** 2 + (x - 64) ** 2) / 64.0**2).astype(np.float32))
    common = [
        "correct",
        tile,
        "--flatfield",
        str(flat),
        "--background",
        "100",
        "--levels",
        "2",
        "--workers",
        "1",
        "--memory",
        "2GiB",
    ]

    direct_log = tmp_path / "direct.log"
    assert (
        run(
            [*common, "--out", f"{root}/direct"],
            prefect_env(tmp_path, AWS_ENDPOINT_URL=s3_server),
            direct_log,
        )
        == 0
    ), tail(direct_log)

    proxied_log = tmp_path / "proxied.log"
    with faulty_proxy(s3_server, seed=SEED, failure_rate=0.1, truncate_rate=0.05, slow_rate=0.1) as (
        proxy,
        counts,
    ):
        code = run(
            [*common, "--out", f"{root}/proxied"], prefect_env(tmp_path, AWS_ENDPOINT_URL=proxy), proxied_log
        )
    assert code == 0, tail(proxied_log)
    assert min(counts.slow_down, counts.reset, counts.truncated, counts.slow) > 0, (
        f"a kind of fault never happened: {counts}"
    )

    direct = s3_digest(s3_server, s3_bucket, "direct/")
    proxied = s3_digest(s3_server, s3_bucket, "proxied/")
    assert "tile.ome.zarr/shadeflow.json" in direct
    assert proxied == direct, sorted(k for k in set(direct) | set(proxied) if direct.get(k) != proxied.get(k))
