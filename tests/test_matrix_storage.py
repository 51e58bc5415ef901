"""Reliability matrix rows on storage that changes or refuses mid-run (RELIABILITY.md: S6-S8).

Sources live in moto behind the loopback fault proxy (tests/s3_servers.py). Items run through
the worker's own code in this process (tests/inprocess.py), so a test can act between planning
and reading; the credential row also runs whole on the session's local Ray.
"""

from __future__ import annotations

import gc
import json
import uuid
from pathlib import Path

import inprocess
import pandas as pd
import pytest
from badinputs import encoded
from conftest import manifest_text, photo_like
from fsspec.core import strip_protocol

from pipelines.errors import RunError

IN = "faults-in"
COUNT = 6


def upload_images(
    moto_s3, count: int = COUNT, acl: str = "private"
) -> tuple[str, dict[str, bytes]]:
    """``count`` small PNGs under a fresh prefix (moto lives all session); (prefix, bytes)."""
    prefix = f"matrix-{uuid.uuid4().hex[:8]}"
    client = moto_s3.client()
    files = {f"img_{i:03d}.png": encoded(photo_like(48, 64, seed=i), "PNG") for i in range(count)}
    for name, data in files.items():
        client.put_object(Bucket=IN, Key=f"{prefix}/{name}", Body=data, ACL=acl)
    return prefix, files


def s3_manifest(tmp_path: Path, prefix: str, endpoint: str, *extra: str) -> Path:
    options = ", ".join([f"endpoint_url: '{endpoint}'", *extra])
    source = f'source: {{uri: "s3://{IN}/{prefix}", glob: "*", storage_options: {{{options}}}}}'
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest_text(Path("unused"), tmp_path / "out", source=source))
    return path


@pytest.fixture
def aws_env(moto_s3, monkeypatch):
    """moto's credentials for the calls this process makes."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)


@pytest.mark.matrix("S6")
def test_sources_replaced_or_deleted_after_planning_are_quarantined_never_mixed(
    tmp_path, moto_s3, aws_env, matrix
):
    prefix, files = upload_images(moto_s3)
    loaded = inprocess.load(s3_manifest(tmp_path, prefix, moto_s3.endpoint_url))
    items = inprocess.plan_items(loaded)  # listed: sizes and ETags as they are now
    client = moto_s3.client()
    same_size = bytearray(files["img_001.png"])
    same_size[len(same_size) // 2] ^= 0xFF  # other bytes, same length: only the ETag tells
    client.put_object(Bucket=IN, Key=f"{prefix}/img_001.png", Body=bytes(same_size))
    client.put_object(Bucket=IN, Key=f"{prefix}/img_002.png", Body=files["img_000.png"])
    for name in ("img_003.png", "img_004.png"):
        client.delete_object(Bucket=IN, Key=f"{prefix}/{name}")
    rows = inprocess.processor(loaded).process(items)
    figures = inprocess.conservation(rows, items_in=COUNT, variants=2)
    by_id = {r["image_id"]: r.get("reason") for r in rows}
    assert {k: v for k, v in by_id.items() if v} == {
        "img_001.png": "source_changed",
        "img_002.png": "source_changed",
        "img_003.png": "missing",
        "img_004.png": "missing",
    }
    # What was made, was made from the bytes that were listed: no stale or new bytes mixed in.
    stale = [
        r["image_id"]
        for r in rows
        if r["status"] == "ok" and r["source_sha256"] != inprocess.sha256(files[r["image_id"]])
    ]
    assert stale == []
    found = inprocess.reasons(rows)
    matrix.record(**figures, injected={"source_changed": 2, "missing": 2}, reasons=found)
    assert found == {"source_changed": 2, "missing": 2}


def requests_after_first_403(proxy) -> int:
    outcomes = [outcome for _, _, outcome in proxy.log]
    return len(outcomes) - outcomes.index("403") - 1 if "403" in outcomes else -1


@pytest.mark.matrix("S7")
def test_credentials_expiring_mid_run_stop_the_worker_at_once_naming_them(
    tmp_path, moto_s3, fault_proxy, aws_env, matrix
):
    prefix, _ = upload_images(moto_s3)
    loaded = inprocess.load(s3_manifest(tmp_path, prefix, fault_proxy.endpoint_url))
    items = inprocess.plan_items(loaded)
    expiry = fault_proxy.inject("403", "GET", rf"/{prefix}/img_", times=None, after=2)
    with pytest.raises(RunError) as stopped:
        inprocess.processor(loaded).process(items)
    message = str(stopped.value)
    after = requests_after_first_403(fault_proxy)
    matrix.record(
        items_in=COUNT,
        refused_requests=expiry.injected,
        requests_after_first_403=after,
        error=message[:240],
        quarantined_as_read_error=0,
    )
    assert "ExpiredToken" in message or "expired" in message.lower()
    assert "check the credentials" in message and f"{prefix}/img_002.png" in message
    assert expiry.spared == 2 and after <= 2  # no retry storm, no march through every item


@pytest.mark.slow
@pytest.mark.matrix("S7")
def test_a_run_whose_credentials_expire_fails_clearly_and_resumes(
    ray_local, tmp_path, moto_s3, fault_proxy, matrix
):
    from pipelines.run import run_manifest

    # Unsigned requests of public objects: the session's Ray workers have no AWS variables.
    prefix, files = upload_images(moto_s3, acl="public-read")
    path = s3_manifest(tmp_path, prefix, fault_proxy.endpoint_url, "anon: true")
    overrides = ["compute.batch_size=1", "compute.actors=2"]
    expiry = fault_proxy.inject("403", "GET", rf"/{prefix}/img_", times=None, after=2)
    with pytest.raises(RunError) as failed:
        run_manifest(inprocess.load(path, *overrides))
    message = str(failed.value)
    cause = next((line for line in message.splitlines() if "cannot read source" in line), "")
    # The error's traceback holds the failed run's Ray Data executor, whose actors hold this
    # session's CPUs: dropped, the executor shuts down and the re-run can be scheduled.
    del failed
    gc.collect()
    after = requests_after_first_403(fault_proxy)
    out = tmp_path / "out"
    committed_after_failure = (out / "_COMMITTED").exists()
    fault_proxy.clear()  # fresh credentials
    summary = run_manifest(inprocess.load(path, *overrides))
    marker = json.loads((out / "_COMMITTED").read_text())
    index = pd.read_parquet(out / marker["index"])
    wrong = sum(
        inprocess.sha256(Path(strip_protocol(row.output_uri)).read_bytes()) != row.output_sha256
        for row in index.itertuples()
    )
    matrix.record(
        items_in=COUNT,
        items_ok=summary.items_ok + summary.items_resumed,
        items_quarantined=summary.items_quarantined,
        duplicates=int(index.duplicated(["image_id", "variant"]).sum()),
        canary_hits=0,
        refused_requests=expiry.injected,
        requests_after_first_403=after,
        error=cause[:240],
        committed_after_failure=committed_after_failure,
        resumed_items=summary.items_resumed,
        rerun_status=summary.status,
    )
    assert "check the credentials" in cause and "expired" in cause.lower()
    assert after <= 4, fault_proxy.log  # each of the 2 actors may have one read in flight
    assert not committed_after_failure
    assert summary.status == "committed" and summary.items_quarantined == 0
    assert sorted(set(index["image_id"])) == sorted(files) and len(index) == 2 * COUNT
    assert wrong == 0


@pytest.mark.matrix("S8")
def test_outputs_already_at_their_keys_with_other_bytes_are_replaced_by_the_right_bytes(
    tmp_path, tiny_manifest, matrix
):
    path = tiny_manifest(count=4)
    probe = inprocess.process(path, "output.format=png", f"output.uri={tmp_path / 'probe'}")
    expected = {
        Path(strip_protocol(r["output_uri"])).relative_to(tmp_path / "probe"): r for r in probe
    }
    # A crashed earlier attempt (or anyone) left other bytes at the keys of two items.
    out, injected = tmp_path / "out", 0
    for key, row in sorted(expected.items()):
        if row["image_id"] in ("img_001.png", "img_002.png"):
            (out / key).parent.mkdir(parents=True, exist_ok=True)
            (out / key).write_bytes(b"stale bytes from another attempt")
            injected += 1
    flagged_before = sum(
        (out / key).exists() and inprocess.sha256((out / key).read_bytes()) != row["output_sha256"]
        for key, row in expected.items()
    )
    rows = inprocess.process(path, "output.format=png", f"output.uri={out}")
    figures = inprocess.conservation(rows, items_in=4, variants=2)
    mismatches = sum(
        inprocess.sha256(Path(strip_protocol(r["output_uri"])).read_bytes()) != r["output_sha256"]
        for r in rows
    )
    same_as_probe = sorted(r["output_sha256"] for r in rows) == sorted(
        r["output_sha256"] for r in probe
    )
    matrix.record(
        **figures,
        injected=injected,
        flagged_before=flagged_before,
        mismatches_after=mismatches,
        identical_to_clean_run=same_as_probe,
    )
    assert injected == 4 and flagged_before == injected
    assert mismatches == 0 and same_as_probe
