"""Storage faults injected by a loopback proxy in front of moto (RELIABILITY.md, rows S1-S5).

Whole pipeline runs (a subprocess each, as users run it) prove the transient and permanent
cases; the storage functions are tested directly where that proves the same thing faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import RETAIL_SMALL, pipeline_cli

from pipelines.errors import ItemError, Reason, RunError
from pipelines.manifest import OutputSpec
from pipelines.sink import DatasetSink
from pipelines.sources import READ_ATTEMPTS, S3_RETRIES, filesystem, read_bytes
from pipelines.storage import publish_bytes

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
IN, OUT = "faults-in", "faults-out"
MiB = 2**20


def unique(prefix: str) -> str:
    """A fresh key prefix: moto's state lives for the whole session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def uploader(moto_s3) -> Any:
    """A boto3 client that stores no checksum, as older tools do: only our size check then
    stands between a body cut short in transit and the decoder."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=moto_s3.endpoint_url,
        config=Config(request_checksum_calculation="when_required"),
        **{k.lower(): v for k, v in moto_s3.env().items() if k != "AWS_DEFAULT_REGION"},
        region_name="us-east-1",
    )


def through(proxy, **extra) -> dict:
    """storage_options reaching moto through the proxy."""
    return {"endpoint_url": proxy.endpoint_url, "skip_instance_cache": True, **extra}


@pytest.fixture
def env(moto_s3, monkeypatch):
    """moto's credentials in this process (for direct calls) and for subprocesses."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    return moto_s3.env()


@pytest.fixture
def shelves(moto_s3) -> str:
    """The bundled shelves uploaded under a fresh prefix; returns the source URI."""
    prefix = unique("shelves")
    client = uploader(moto_s3)
    for path in sorted((ROOT / "samples/shelves").iterdir()):
        client.put_object(Bucket=IN, Key=f"{prefix}/{path.name}", Body=path.read_bytes())
    return f"s3://{IN}/{prefix}"


def run_retail(
    proxy, source: str, output: str, env: dict, *extra: str
) -> tuple[int, dict, str, float]:
    start = time.monotonic()
    code, summary, stderr = pipeline_cli(
        "manifests/retail_shelf.yaml",
        *RETAIL_SMALL,
        *extra,
        *("--set", f"source.uri={source}"),
        *("--set", f"source.annotations={source}/boxes.csv"),
        *("--set", f"source.storage_options.endpoint_url={proxy.endpoint_url}"),
        *("--set", f"output.uri={output}"),
        *("--set", f"output.storage_options.endpoint_url={proxy.endpoint_url}"),
        env=env,
    )
    return code, summary, stderr, time.monotonic() - start


def committed_index(moto_s3, output: str) -> pd.DataFrame:
    options = {"endpoint_url": moto_s3.endpoint_url}
    marker = json.loads(s3fs.S3FileSystem(**options).cat_file(f"{output}/_COMMITTED"))
    return pd.read_parquet(f"{output}/{marker['index']}", storage_options=options)


def same_outputs(index: pd.DataFrame, reference: pd.DataFrame) -> bool:
    key = ["image_id", "variant"]
    ours = index.set_index(key)["output_sha256"].sort_index()
    return ours.equals(reference.set_index(key)["output_sha256"].sort_index())


def test_transient_faults_are_retried_and_the_output_is_identical(
    fault_proxy, moto_s3, shelves, env, retail_local_index
):
    shelf = f"/{IN}/{shelves.split('/')[-1]}/shelf_00"
    planned = [
        fault_proxy.inject("503", "GET", rf"/{IN}\?list-type", times=1),  # the listing
        fault_proxy.inject("500", "GET", shelf + "0", times=2),
        fault_proxy.inject("reset", "GET", shelf + "0", times=1),
        fault_proxy.inject("503", "GET", shelf + "1", times=1),
        fault_proxy.inject("truncate", "GET", shelf + "1", times=2),
        fault_proxy.inject("short", "GET", shelf + "1", times=1),  # only our size check sees it
        fault_proxy.inject("500", "PUT", "/images/", times=2),
        fault_proxy.inject("503", "PUT", "/images/", times=1),
        fault_proxy.inject("reset", "PUT", "/masks/", times=2),
        fault_proxy.inject("500", "PUT", "/_staging/", times=1),
    ]
    output = f"s3://{OUT}/{unique('transient')}"
    code, summary, stderr, wall = run_retail(fault_proxy, shelves, output, env)
    assert code == 0 and summary["status"] == "committed", (summary, stderr[-3000:])
    assert summary["items_quarantined"] == 0
    assert [f.injected for f in planned] == [f.times for f in planned]  # every fault happened
    index = committed_index(moto_s3, output)
    assert same_outputs(index, retail_local_index)
    print(
        f"transient: {sum(f.times for f in planned)} faults in {sum(fault_proxy.requests.values())}"
        f" requests {dict(fault_proxy.injected)}; run {wall:.1f} s"
    )


def test_a_permanent_500_fails_the_run_in_bounded_time_and_a_rerun_succeeds(
    fault_proxy, moto_s3, shelves, env, retail_local_index
):
    refusing = fault_proxy.inject("500", "PUT", "", times=None)  # the store refuses every write
    output = f"s3://{OUT}/{unique('permanent')}"
    code, summary, stderr, wall = run_retail(fault_proxy, shelves, output, env)
    assert code == 1 and summary["status"] == "failed", (summary, stderr[-3000:])
    assert "nothing is committed" in summary["message"]
    assert "internal error" in summary["message"].lower()  # the store's own words reach the user
    fs = s3fs.S3FileSystem(endpoint_url=moto_s3.endpoint_url)
    assert not fs.exists(f"{output}/_COMMITTED") and not fs.exists(f"{output}/index.parquet")
    # The run's first write (its staging plan) gave up after one retry budget, before compute.
    assert refusing.injected == S3_RETRIES["total_max_attempts"]
    assert (
        wall < 120
    )  # startup and those budgets, not minutes (33 s on 2 busy cores; healthy: 16 s)
    print(f"permanent 500: failed after {wall:.1f} s, {refusing.injected} PUTs refused")
    fault_proxy.clear()
    code, summary, stderr, _ = run_retail(fault_proxy, shelves, output, env)
    assert code == 0 and summary["status"] == "committed", (summary, stderr[-3000:])
    assert same_outputs(committed_index(moto_s3, output), retail_local_index)


def test_a_store_that_cannot_be_reached_is_a_clear_fatal_error(fault_proxy, env):
    from s3_servers import free_ports

    fault_proxy.inject("500", "*", "", times=None)
    closed = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens: connection refused
    for options in (
        {"endpoint_url": fault_proxy.endpoint_url},
        {"endpoint_url": closed, **FAIL_FAST},
    ):
        spec = OutputSpec(uri=f"s3://{OUT}/{unique('down')}", storage_options=options)
        start = time.monotonic()
        with pytest.raises(RunError, match="cannot read output.uri"):
            DatasetSink(spec, "run").check_target()
        print(f"{options}: RunError after {time.monotonic() - start:.1f} s")
        assert time.monotonic() - start < 60


def test_reads_are_checked_and_retries_bounded(fault_proxy, moto_s3, env):
    prefix = unique("reads")
    data, other = os.urandom(300_000), os.urandom(300_000)
    uploader(moto_s3).put_object(Bucket=IN, Key=f"{prefix}/plain.bin", Body=data)
    moto_s3.client().put_object(Bucket=IN, Key=f"{prefix}/summed.bin", Body=data)  # + CRC32
    plain, summed = f"s3://{IN}/{prefix}/plain.bin", f"s3://{IN}/{prefix}/summed.bin"
    # Cut short twice: read again, and the third read is whole. One GET per read, and a HEAD
    # after each short one (is the object smaller now, i.e. changed, or was the body cut?).
    fault_proxy.inject("short", "GET", "/plain.bin", times=READ_ATTEMPTS - 1)
    assert read_bytes(plain, through(fault_proxy), size=len(data)) == data
    assert fault_proxy.requests == {"GET": READ_ATTEMPTS, "HEAD": READ_ATTEMPTS - 1}
    # A stored checksum catches a cut body too (botocore validates it): read again.
    fault_proxy.inject("short", "GET", "/summed.bin", times=1)
    assert read_bytes(summed, through(fault_proxy), size=len(data)) == data
    # Cut every time: refused after READ_ATTEMPTS reads, never returned to be decoded.
    fault_proxy.clear()
    fault_proxy.inject("short", "GET", "/plain.bin", times=None)
    with pytest.raises(ItemError, match="listing said 300000"):
        read_bytes(plain, through(fault_proxy), size=len(data))
    assert fault_proxy.requests == {"GET": READ_ATTEMPTS, "HEAD": READ_ATTEMPTS}
    # Replaced after listing by same-size bytes: the listed ETag (plain md5) tells.
    fault_proxy.clear()
    etag = moto_s3.client().head_object(Bucket=IN, Key=f"{prefix}/plain.bin")["ETag"]
    assert read_bytes(plain, through(fault_proxy), size=len(data), etag=etag) == data
    uploader(moto_s3).put_object(Bucket=IN, Key=f"{prefix}/plain.bin", Body=other)
    with pytest.raises(ItemError, match="ETag") as changed:
        read_bytes(plain, through(fault_proxy), size=len(data), etag=etag)
    assert changed.value.reason == Reason.SOURCE_CHANGED  # at once: re-reading cannot help
    assert fault_proxy.requests == {"GET": 2, "HEAD": 1}
    # A permanent 500: botocore's attempts (ours by default, the user's when given), no more.
    for options, attempts in (({}, S3_RETRIES["total_max_attempts"]), (USER_RETRIES, 2)):
        fault_proxy.clear()
        fault_proxy.inject("500", "GET", "/plain.bin", times=None)
        start = time.monotonic()
        with pytest.raises(OSError, match="internal error"):
            read_bytes(plain, through(fault_proxy, **options), size=len(data))
        print(f"permanent 500 on a read: {time.monotonic() - start:.1f} s, {attempts} attempts")
        assert fault_proxy.requests == {"GET": attempts}


USER_RETRIES = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 2}}}
# Where retries are not what a test is about: botocore gives up at once (s3fs still repeats
# connection errors 5 times, quickly).
FAIL_FAST = {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}}


def big_work(rows: int, run_id: str) -> pa.Table:
    """Index rows carrying ~50 KiB of incompressible text each: a big index, made quickly."""
    from pipelines.schema import rows_to_table

    lineage = {"source_uri": "s3://x", "manifest_sha256": "m", "code_version": "c"}
    where = {"output_uri": "s3://x/images/a.jpg", "mask_uri": "s3://x/masks/a.png"}
    return rows_to_table(
        [
            {
                "image_id": f"{i:05d}.jpg",
                "run_id": run_id,
                "status": "ok",
                **lineage,
                **where,
                "mask_info": os.urandom(48 * 1024).hex(),
            }
            for i in range(rows)
        ]
    )


def staging_sink(endpoint: str, root: str, run_id: str, **extra: Any) -> DatasetSink:
    """A sink whose staged index goes up in 5 MiB multipart parts (S3's smallest)."""
    options = {"endpoint_url": endpoint, "default_block_size": 5 * MiB, **extra}
    return DatasetSink(OutputSpec(uri=f"s3://{root}", storage_options=options), run_id)


@pytest.mark.matrix("S4")
def test_a_failed_upload_leaves_nothing_at_a_final_key(fault_proxy, moto_s3, env, matrix):
    from botocore.exceptions import ConnectionError as BotoConnectionError

    root = f"{OUT}/{unique('partial')}"
    fs, _ = filesystem(f"s3://{root}", through(fault_proxy, **FAIL_FAST))
    # The hazard: s3fs publishes what was written when an exception leaves `with fs.open(...)`.
    with pytest.raises(RuntimeError), fs.open(f"{root}/opened.bin", "wb") as handle:
        handle.write(b"x" * 1000)
        raise RuntimeError("the encoder failed halfway")
    assert fs.size(f"{root}/opened.bin") == 1000
    # publish_bytes sends one PUT: when it dies in transit every time, the key stays empty.
    fault_proxy.inject("reset", "PUT", "/published.bin", times=None)
    with pytest.raises(BotoConnectionError):
        publish_bytes(fs, f"{root}/published.bin", os.urandom(100_000))
    assert not fs.exists(f"{root}/published.bin")
    # A commit writes the version's index as a multipart upload: when the store fails it,
    # nothing is committed and no reader-visible key (record, pointer, copies) exists.
    sink = staging_sink(fault_proxy.endpoint_url, root + "/ds", "failed-run", **FAIL_FAST)
    sink.open("m", None, "t")
    sink.add(big_work(150, "failed-run"))
    fault_proxy.inject("500", "*", "uploadId=", times=None)  # > 5 MiB: multipart, and it fails
    with pytest.raises(OSError, match="nternal"):
        commit_sink(sink, "failed-run")
    direct = s3fs.S3FileSystem(endpoint_url=moto_s3.endpoint_url, skip_instance_cache=True)
    left = [p.split("/ds/", 1)[1] for p in direct.find(root + "/ds")]
    # staged rows are kept for a resume; the version folder is named by no record
    assert all(p.startswith(("_staging/failed-run/", "versions/000001-failed-run/")) for p in left)
    assert not direct.exists(f"{root}/ds/versions/000001.json"), left
    # The figure: final keys holding anything but the bytes meant for them (the unguarded
    # `with fs.open` above is the hazard shown, not one of ours).
    partial = int(direct.exists(f"{root}/published.bin")) + sum(
        not p.startswith(("_staging/", "versions/000001-")) for p in left
    )
    matrix.record(
        failed_uploads=2,
        objects_at_final_keys_with_wrong_size=partial,
        unguarded_open_published_bytes=1000,
    )


CRASH = """
import sys, time
sys.path[:0] = [{tests!r}]
from test_storage_faults import big_work, staging_sink
from pipelines.commit import parquet_writer
from pipelines.schema import INDEX_SCHEMA, split_work
sink = staging_sink({endpoint!r}, {root!r}, "crashed-run")
path = {root!r} + "/versions/000001-crashed-run/index.parquet"
with parquet_writer(sink.fs, path, INDEX_SCHEMA) as (writer, _):  # a commit writing its index
    writer.write_table(split_work(big_work(150, "crashed-run"))[0])  # > 5 MiB: parts go up
    print("part uploaded", flush=True)
    time.sleep(300)
"""


def commit_sink(sink: DatasetSink, run_id: str) -> Any:
    """Commit what the sink staged as the dataset's first version."""
    from pipelines.commit import commit_version
    from pipelines.incremental import everything

    nothing_listed = pa.table({"image_id": pa.array([], pa.string())})
    from pipelines.manifest import recipe_bytes

    recipe = {"name": "faults"}  # the commit stores the recipe under its own hash
    sha = hashlib.sha256(recipe_bytes(recipe)).hexdigest()
    record = {  # what a run's record holds that the commit's exports and card read
        "run_id": run_id,
        "name": "faults",
        "manifest_sha256": sha,
        "recipe": recipe,
        "manifest": {
            "resolved": {"seed": 1, "source": {"uri": "s3://x"}, "output": {"uri": "s3://y"}}
        },
        "started_at": "2026-11-22T02:00:00+00:00",
        "finished_at": "2026-11-22T02:01:00+00:00",
    }
    return commit_version(sink, record, None, everything(nothing_listed), carry_over=False)


@pytest.mark.matrix("S5")
def test_a_crash_mid_multipart_upload_is_invisible_and_aborted_at_the_next_commit(
    moto_s3, env, matrix
):
    root = f"{OUT}/{unique('crash')}/ds"
    script = CRASH.format(tests=str(ROOT / "tests"), endpoint=moto_s3.endpoint_url, root=root)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout.readline().strip() == "part uploaded"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    client = moto_s3.client()
    key = root.split("/", 1)[1]
    pending = client.list_multipart_uploads(Bucket=OUT, Prefix=key).get("Uploads", [])
    assert [u["Key"] for u in pending] == [f"{key}/versions/000001-crashed-run/index.parquet"]
    assert client.list_objects_v2(Bucket=OUT, Prefix=key)["KeyCount"] == 0  # nothing visible
    sink = staging_sink(moto_s3.endpoint_url, root, "next-run")
    sink.check_target()  # a crashed run's leftovers are no reason to refuse the folder
    sink.open("m", None, "t")
    sink.add(big_work(2, "next-run"))
    commit_sink(sink, "next-run")
    assert sink.aborted_uploads == [f"{OUT}/{key}/versions/000001-crashed-run/index.parquet"]
    after = client.list_multipart_uploads(Bucket=OUT, Prefix=key).get("Uploads", [])
    assert after == []
    matrix.record(
        pending_uploads_after_crash=len(pending),
        visible_objects_after_crash=0,
        aborted_at_commit=len(sink.aborted_uploads),
        pending_uploads_after_rerun=len(after),
    )
    index = pq.read_table(
        f"{root}/index.parquet", filesystem=s3fs.S3FileSystem(endpoint_url=moto_s3.endpoint_url)
    )
    assert index.num_rows == 2


def test_an_item_whose_write_failed_leaves_no_orphan_in_a_fresh_output(
    fault_proxy, moto_s3, shelves, env
):
    # The first variant's image of one item is written, then its mask is refused for good: the
    # item is quarantined (write_error) and its written image must not outlive the commit.
    fault_proxy.inject("500", "PUT", r"/masks/.*shelf_001\.jpg__v000", times=None)
    output = f"s3://{OUT}/{unique('orphan')}"
    tolerant = ("--set", "compute.max_error_rate=0.5")
    code, summary, stderr, _ = run_retail(fault_proxy, shelves, output, env, *tolerant)
    assert code == 0 and summary["status"] == "committed", (summary, stderr[-3000:])
    assert summary["quarantine_reasons"] == {"write_error": 1}
    index = committed_index(moto_s3, output)
    fs = s3fs.S3FileSystem(endpoint_url=moto_s3.endpoint_url, skip_instance_cache=True)
    files = {f"s3://{p}" for p in fs.find(f"{output}/images") + fs.find(f"{output}/masks")}
    assert files == set(index["output_uri"]) | set(index["mask_uri"])
    assert not any("shelf_001" in f for f in files)
