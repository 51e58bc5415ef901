"""A planted secret appears nowhere a run writes: dataset, run record, logs, Ray's session folder.

The S3 server's secret is a random canary. Runs authenticate with it three ways users do — a
``${NAME}`` reference in storage_options, an AWS profile file, and (failing) a wrong key id —
and then every byte they left behind is searched.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import pipeline_cli

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SHELVES = ROOT / "samples" / "shelves"
LIMIT = ["--limit", "2", "--set", "variants=1"]


def files_holding(needle: bytes, folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


def objects_holding(needle: bytes, client, bucket: str, prefix: str) -> tuple[int, list[str]]:
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]
    hits = [k for k in keys if needle in client.get_object(Bucket=bucket, Key=k)["Body"].read()]
    return len(keys), hits


@pytest.fixture(scope="module")
def canary_inputs(seaweed_s3):
    client = seaweed_s3.client()
    for path in sorted(SHELVES.iterdir()):
        client.put_object(Bucket="inputs", Key=f"canary/{path.name}", Body=path.read_bytes())
    return seaweed_s3


def source_and_output(output: str, options: str) -> list[str]:
    return [
        *("--set", f"source={{uri: 's3://inputs/canary', storage_options: {options}}}"),
        *("--set", "source.annotations=s3://inputs/canary/boxes.csv"),
        *("--set", f"output={{uri: '{output}', storage_options: {options}}}"),
    ]


def test_the_search_finds_a_planted_canary(tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "log.txt").write_bytes(b"...CANARY-abc...")
    assert files_holding(b"CANARY-abc", tmp_path) == [tmp_path / "deep" / "er" / "log.txt"]


@pytest.fixture
def ray_tmp():
    """Ray's temp folder for the runs: short, since Ray's socket paths must fit 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="sf-ray-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.matrix("C6")
def test_secret_by_reference_and_by_profile_leaves_no_trace(
    canary_inputs, tmp_path, ray_tmp, matrix
):
    server = canary_inputs
    canary = server.secret_key.encode()
    outputs = []

    # 1. storage_options name the variables; the values live only in the environment.
    refs = "{endpoint_url: '%s', key: '${SF_TEST_KEY}', secret: '${SF_TEST_SECRET}'}"
    env = {"SF_TEST_KEY": server.access_key, "SF_TEST_SECRET": server.secret_key}
    code, summary, stderr = pipeline_cli(
        "manifests/retail_shelf.yaml",
        *LIMIT,
        *source_and_output("s3://datasets/canary-ref", refs % server.endpoint_url),
        env={**env, "RAY_TMPDIR": str(ray_tmp)},
    )
    assert code == 0 and summary["status"] == "committed", stderr[-2000:]
    outputs.append((summary, stderr))

    # 2. an AWS profile file and the standard endpoint variable; nothing in the manifest.
    profile = tmp_path / "aws_credentials"
    profile.write_text(
        f"[nightly]\naws_access_key_id = {server.access_key}\n"
        f"aws_secret_access_key = {server.secret_key}\n"
    )
    code, summary, stderr = pipeline_cli(
        "manifests/retail_shelf.yaml",
        *LIMIT,
        *source_and_output("s3://datasets/canary-profile", "{}"),
        env={
            "AWS_SHARED_CREDENTIALS_FILE": str(profile),
            "AWS_PROFILE": "nightly",
            "AWS_ENDPOINT_URL_S3": server.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "RAY_TMPDIR": str(ray_tmp),
        },
    )
    assert code == 0 and summary["status"] == "committed", stderr[-2000:]
    outputs.append((summary, stderr))
    profile.unlink()  # the one file that holds the secret on purpose

    # 3. a wrong key id with the right secret: refused, clearly, without echoing the secret.
    code, summary, stderr = pipeline_cli(
        "manifests/retail_shelf.yaml",
        *LIMIT,
        *source_and_output("s3://datasets/canary-denied", refs % server.endpoint_url),
        env={**env, "SF_TEST_KEY": "not-a-key-id", "RAY_TMPDIR": str(ray_tmp)},
    )
    assert code != 0
    assert "s3://datasets/canary-denied" in stderr and "Forbidden" in stderr  # what and why
    assert "AWS_PROFILE" in stderr  # and what to check
    outputs.append((summary, stderr))

    client = server.client()
    written, hits = objects_holding(canary, client, "datasets", "canary-")
    ray_hits, local_hits = files_holding(canary, ray_tmp), files_holding(canary, tmp_path)
    said = [text for summary, stderr in outputs for text in (stderr, str(summary))]
    said_hits = sum(canary.decode() in text for text in said)
    matrix.record(
        canary_hits=len(hits) + len(ray_hits) + len(local_hits) + said_hits,
        objects_searched=written,
        ray_session_files_searched=sum(1 for p in ray_tmp.rglob("*") if p.is_file()),
        runs=len(outputs),
    )
    assert written >= 2 * (2 + 4)  # two datasets: 2 images + 2 masks + index, quarantine, record...
    assert hits == []
    assert any(ray_tmp.rglob("*.log")) or any(ray_tmp.rglob("*.out"))  # Ray's logs were searched
    assert ray_hits == []
    assert local_hits == []
    assert said_hits == 0
    record = client.get_object(Bucket="datasets", Key="canary-ref/run.json")["Body"].read()
    assert b"${SF_TEST_SECRET}" in record  # the reference is recorded, the value is not
