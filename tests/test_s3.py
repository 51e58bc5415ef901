"""End to end against a real S3 server (SeaweedFS on loopback, auth enforced)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import s3fs
from conftest import RETAIL_SMALL, pipeline_cli

from pipelines import versions

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_wrong_secret_and_anonymous_requests_are_refused(seaweed_s3):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
        seaweed_s3.client(secret_key="not-the-secret").list_objects_v2(Bucket="inputs")
    anonymous = s3fs.S3FileSystem(anon=True, endpoint_url=seaweed_s3.endpoint_url)
    with pytest.raises(PermissionError):
        anonymous.ls("inputs")


def test_seaweed_harness_fails_clearly_on_a_busy_port_or_a_missing_binary(tmp_path):
    from s3_servers import SeaweedS3

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = SeaweedS3(tmp_path, s3_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="busy"):
            busy.start()
    with pytest.raises(RuntimeError, match="`weed` was not found"):
        SeaweedS3(tmp_path, binary=str(tmp_path / "weed"))


def test_retail_manifest_reads_and_writes_buckets(seaweed_s3, retail_local_index):
    client = seaweed_s3.client()
    for path in sorted((ROOT / "samples/shelves").iterdir()):
        client.put_object(Bucket="inputs", Key=f"shelves/{path.name}", Body=path.read_bytes())
    endpoint = seaweed_s3.endpoint_url
    code, summary, stderr = pipeline_cli(
        "manifests/retail_shelf.yaml",
        *RETAIL_SMALL,
        *("--set", "source.uri=s3://inputs/shelves"),
        *("--set", "source.annotations=s3://inputs/shelves/boxes.csv"),
        *("--set", f"source.storage_options.endpoint_url={endpoint}"),
        *("--set", "output.uri=s3://datasets/retail"),
        *("--set", f"output.storage_options.endpoint_url={endpoint}"),
        env=seaweed_s3.env(),
    )
    assert code == 0 and summary["status"] == "committed", (summary, stderr[-2000:])
    # A reader of the dataset: pandas and pyarrow through s3fs, as an ML team would read it.
    options = {
        "endpoint_url": endpoint,
        "key": seaweed_s3.access_key,
        "secret": seaweed_s3.secret_key,
    }
    fs = s3fs.S3FileSystem(**options)
    marker = json.loads(fs.cat_file("datasets/retail/_COMMITTED"))
    index_path = f"s3://datasets/retail/{marker['index']}"
    index = pd.read_parquet(index_path, storage_options=options)
    with fs.open(index_path, "rb") as handle:
        assert versions.parquet_file(handle).metadata.num_rows == len(index) == marker["rows"] == 4
    assert (index["status"] == "ok").all()
    assert index["source_uri"].str.startswith("s3://inputs/shelves/").all()
    assert index["output_uri"].str.startswith("s3://datasets/retail/images/").all()
    for row in index.itertuples():
        assert hashlib.sha256(fs.cat_file(row.output_uri)).hexdigest() == row.output_sha256
        assert hashlib.sha256(fs.cat_file(row.mask_uri)).hexdigest() == row.mask_sha256
    key = ["image_id", "variant"]
    remote = index.set_index(key)["output_sha256"].sort_index()
    assert remote.equals(retail_local_index.set_index(key)["output_sha256"].sort_index())
    # The secret is a canary: it must not reach any object written or the run's output.
    leaked = [p for p in fs.find("datasets") if seaweed_s3.secret_key.encode() in fs.cat_file(p)]
    assert leaked == [] and seaweed_s3.secret_key not in json.dumps(summary) + stderr
    # An auditor, given the manifest for its storage options: files, sources, two rows remade.
    sets = [f"source.storage_options.endpoint_url={endpoint}", "output.uri=s3://datasets/retail"]
    sets.append(f"output.storage_options.endpoint_url={endpoint}")
    environ = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [str(ROOT / ".venv/bin/pipeline"), "audit", "manifests/retail_shelf.yaml"]
        + [arg for item in sets for arg in ("--set", item)]
        + ["--reproduce", "2", "--json"],
        env={**environ, **seaweed_s3.env()},
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["passed"], (report, done.stderr[-2000:])
    checks = report["checks"]
    assert checks["files"]["files"] == 8 and checks["reproduce"]["identical"] == 2
    assert checks["sources"]["sources"] == 2 and checks["record"]["status"] == "pass"
