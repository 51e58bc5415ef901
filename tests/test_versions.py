"""Nightly runs: versions, incremental work, crash-safe commits, resume and concurrent runs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, write_images

from pipelines.manifest_loader import load_manifest
from pipelines.run import run_manifest
from pipelines.versions import index_digest, parquet_file, read_parquet

pytestmark = pytest.mark.slow


def run(path: Path, *overrides: str, limit: int | None = None):
    return run_manifest(load_manifest(path, list(overrides)), limit=limit)


def committed(out: Path) -> tuple[dict, pd.DataFrame]:
    """The pointer and the index it names, read the documented way."""
    marker = json.loads((out / "_COMMITTED").read_text())
    return marker, pd.read_parquet(out / marker["index"])


def digest(out: Path) -> str:
    marker = json.loads((out / "_COMMITTED").read_text())
    return index_digest(pq.read_table(out / marker["index"]))


def add_images(folder: Path, first: int, count: int) -> list[str]:
    """New sources img_<first>.. (different pictures from write_images' own)."""
    from conftest import photo_like
    from PIL import Image

    names = []
    for i in range(first, first + count):
        name = f"img_{i:03d}.png"
        Image.fromarray(photo_like(96, 128, seed=1000 + i)).save(folder / name)
        names.append(name)
    return names


def test_two_nights_process_only_the_new_sources(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=5)
    night1 = run(path)
    assert (night1.status, night1.version, night1.items_in) == ("committed", 1, 5)
    add_images(tmp_path / "images", 5, 3)
    night2 = run(path)
    assert (night2.status, night2.version, night2.base_version) == ("committed", 2, 1)
    assert (night2.items_in, night2.items_ok, night2.items_unchanged) == (3, 3, 5)
    marker, index = committed(tmp_path / "out")
    assert marker["version"] == 2 and index.image_id.nunique() == 8
    assert len(index) == 8 * 2  # two variants each, no doubles
    assert index.manifest_sha256.nunique() == 1  # one recipe
    by_run = index.groupby("run_id").image_id.nunique().to_dict()
    assert by_run == {night1.run_id: 5, night2.run_id: 3}
    # the rows kept from night 1 are night 1's rows, unchanged
    v1 = json.loads((tmp_path / "out/versions/000001.json").read_text())
    kept = index[index.run_id == night1.run_id].reset_index(drop=True)
    before = pd.read_parquet(tmp_path / "out" / v1["index"])
    assert index_digest(pa.Table.from_pandas(kept)) == index_digest(pa.Table.from_pandas(before))
    night3 = run(path)
    assert (night3.status, night3.version, night3.items_in) == ("up_to_date", 2, 0)


def test_a_changed_source_is_redone_and_a_deleted_one_leaves(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=4)
    run(path)
    images = tmp_path / "images"
    (images / "img_003.png").unlink()
    time.sleep(0.01)
    add_images(images, 0, 1)  # img_000 rewritten with other pixels
    summary = run(path)
    assert (summary.items_in, summary.items_unchanged, summary.items_removed) == (1, 2, 1)
    _, index = committed(tmp_path / "out")
    assert sorted(index.image_id.unique()) == ["img_000.png", "img_001.png", "img_002.png"]
    outputs = {Path(u).name for u in index.output_uri}
    on_disk = {p.name for p in (tmp_path / "out" / "images").rglob("*.png")}
    # the replaced and the removed sources' old outputs stay while an older version needs them
    assert outputs <= on_disk


def test_a_changed_recipe_starts_a_new_generation(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=3)
    first = run(path)
    summary = run(path, "seed=12")
    assert (summary.version, summary.items_in, summary.new_generation) == (2, 3, True)
    _, index = committed(tmp_path / "out")
    assert set(index.run_id) == {summary.run_id}  # nothing carried from the other recipe
    assert index.manifest_sha256.nunique() == 1 and first.run_id not in set(index.run_id)


def test_old_versions_beyond_keep_versions_are_removed(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=2)
    for seed in (1, 2, 3):
        run(path, f"seed={seed}", "output.keep_versions=2")
    out = tmp_path / "out"
    records = sorted(p.name for p in (out / "versions").glob("*.json"))
    assert records == ["000002.json", "000003.json"]
    _, index = committed(out)
    kept = set(index.output_uri)
    v2 = json.loads((out / "versions/000002.json").read_text())
    kept |= set(pd.read_parquet(out / v2["index"]).output_uri)
    on_disk = {p.as_uri() for p in (out / "images").rglob("*.png")}
    assert on_disk == kept  # version 1's outputs are gone, 2's and 3's all there


@pytest.mark.matrix("P9")
def test_a_rerun_into_the_same_output_never_doubles_rows(
    ray_local, tmp_path, tiny_manifest, matrix
):
    path = tiny_manifest(count=3)
    run(path)
    again = run(path)
    rebuilt = run(path, "output.overwrite=true")
    _, index = committed(tmp_path / "out")
    assert (again.status, rebuilt.status, rebuilt.version) == ("up_to_date", "committed", 3 - 1)
    assert len(index) == 3 * 2 and not index.duplicated(["image_id", "variant"]).any()
    matrix.record(
        items_in=rebuilt.items_in,
        items_ok=rebuilt.items_ok,
        items_quarantined=rebuilt.items_quarantined,
        duplicates=int(index.duplicated(["image_id", "variant"]).sum()),
        rows_expected=6,
        rows_committed=len(index),
    )


# --- The driver killed for real: a subprocess joined to the test session's Ray ---------------


def driver(manifest: Path, *args: str, faults: str = "") -> subprocess.Popen:
    """`pipeline run` in a child process attached to the session's Ray (so it starts fast)."""
    import ray

    environ = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    if faults:
        environ["SYNTHFILL_FAULTS"] = faults
    return subprocess.Popen(
        [str(ROOT / ".venv/bin/pipeline"), "run", str(manifest), "--json", *args],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def readers_see(out: Path) -> set[str]:
    """Digests of what each documented reader gets from the committed index right now."""
    import datasets
    import pyarrow.dataset as ds
    import ray

    marker = json.loads((out / "_COMMITTED").read_text())
    index = str(out / marker["index"])
    root = out.as_uri()
    tables = {
        "pandas": pa.Table.from_pandas(pd.read_parquet(index), preserve_index=False),
        "pyarrow.dataset": ds.dataset(index, format="parquet").to_table(),
        "ray": ray.data.read_parquet(index).to_arrow_refs(),
        "datasets": datasets.Dataset.from_parquet(index, keep_in_memory=True).data.table,
        "single path": pq.read_table(out / "index.parquet"),
    }
    tables["ray"] = pa.concat_tables(ray.get(tables["ray"]))
    return {index_digest(t.cast(pq.read_schema(index)), root) for t in tables.values()}


COMMIT_STEPS = ["parts", "version-files", "record", "pointer", "copies"]


@pytest.mark.matrix("P6")
def test_a_driver_killed_at_each_commit_step_leaves_old_or_new(ray_local, tmp_path, matrix):
    from conftest import manifest_text

    images = tmp_path / "images"
    write_images(images, 6)

    def night_one(name: str) -> Path:
        """A dataset holding version 1 (4 sources); 2 more are waiting for night 2."""
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifest_text(images, tmp_path / name))
        run(path, limit=4)
        return path

    clean = night_one("clean")
    old = digest_at(tmp_path / "clean")
    night2 = run(clean)
    new = digest_at(tmp_path / "clean")
    assert (night2.version, night2.items_in, old != new) == (2, 2, True), night2
    figures = {}
    for step in COMMIT_STEPS:
        path, out = night_one(f"crash-{step}"), tmp_path / f"crash-{step}"
        child = driver(path, faults=f"commit:{step}=kill")
        _, stderr = child.communicate(timeout=120)
        assert child.returncode == -signal.SIGKILL, stderr[-2000:]
        seen = readers_see(out)
        assert seen <= {old, new}, f"{step}: a reader saw a mix"
        rerun = run(path)
        assert rerun.status in ("committed", "up_to_date")
        assert digest_at(out) == new, step
        assert readers_see(out) == {new}, step
        leftovers = list((out / "_staging").rglob("*")) if (out / "_staging").exists() else []
        assert leftovers == [], step
        saw = sorted("new" if d == new else "old" for d in seen)  # pointer vs single-path copy
        figures[step] = {"readers_saw": saw, "rerun": rerun.status}
    matrix.record(steps=figures, items_in=6, duplicates=0, digest_equal=len(COMMIT_STEPS))


def digest_at(out: Path) -> str:
    marker = json.loads((out / "_COMMITTED").read_text())
    return index_digest(pq.read_table(out / marker["index"]), out.as_uri())


@pytest.mark.matrix("P5")
def test_a_driver_killed_at_random_points_resumes_to_the_same_index(ray_local, tmp_path, matrix):
    from conftest import manifest_text

    images = tmp_path / "images"
    write_images(images, 16, size=(480, 640))  # ~0.2 s of work each: kills land mid-run
    setting = "compute: {actors: 2, batch_size: 1, max_error_rate: 0.0, checkpoint_s: 0}"

    def manifest(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(manifest_text(images, tmp_path / name, compute=setting))
        return path

    child = driver(manifest("reference"))
    started = wait_for_staging(tmp_path / "reference")
    child.communicate(timeout=180)
    working = time.monotonic() - started  # from the end of listing to the commit
    reference = digest_at(tmp_path / "reference")
    chance = random.Random(20261122)
    trials = []
    for trial in range(5):
        name = f"trial{trial}"
        child = driver(manifest(name))
        wait_for_staging(tmp_path / name)
        if trial % 2:  # half the kills land while items are being written
            wait_for_staging(tmp_path / name, "parts/*.parquet")
            delay = chance.uniform(0, 1.0)
        else:  # the others anywhere in the run's working life
            delay = chance.uniform(0, working)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        out = tmp_path / name
        resumed = run(manifest(name))
        # a kill after the commit record leaves the next run nothing but the pointer to finish
        assert resumed.status in ("committed", "up_to_date"), resumed.message
        assert digest_at(out) == reference, f"trial {trial} (killed at {delay:.1f} s)"
        assert_outputs_match_index(out)
        staging = list((out / "_staging").rglob("*")) if (out / "_staging").exists() else []
        assert staging == []
        trials.append(
            {
                "killed_at_s": round(delay, 2),
                "killed": child.returncode == -signal.SIGKILL,
                "items_resumed": resumed.items_resumed,
                "items_redone": resumed.items_in - resumed.items_resumed,
            }
        )
    matrix.record(
        items_in=16,
        items_ok=16,
        items_quarantined=0,
        duplicates=0,
        working_s=round(working, 2),
        trials=trials,
        digest_equal=f"{len(trials)}/{len(trials)}",
        resumed_any=sum(t["items_resumed"] > 0 for t in trials),
    )
    assert sum(t["items_resumed"] > 0 for t in trials) >= 1, trials  # resume skipped work


def wait_for_staging(out: Path, pattern: str = "plan.json", timeout: float = 120) -> float:
    """When the run's staging plan (it has listed its sources), or a part, appears."""
    deadline = time.monotonic() + timeout
    while not list(out.glob(f"_staging/*/{pattern}")):
        assert time.monotonic() < deadline, f"no run started in {out}"
        time.sleep(0.05)
    return time.monotonic()


def assert_outputs_match_index(out: Path) -> None:
    """Every committed output exists with the bytes the index says (D2: bit-identical)."""
    import hashlib

    _, index = committed(out)
    for uri, sha in zip(index.output_uri, index.output_sha256, strict=True):
        data = Path(uri.removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha


@pytest.mark.matrix("D2")
def test_a_resumed_run_redoes_only_what_was_not_saved(ray_local, tmp_path, matrix):
    from conftest import manifest_text

    images = tmp_path / "images"
    write_images(images, 8)
    # one item hangs, so the driver is certainly mid-run (with parts saved) when it is killed
    setting = "compute: {actors: 1, batch_size: 1, max_error_rate: 0.0, checkpoint_s: 0}"
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text(images, tmp_path / "out", compute=setting))
    reference_path = tmp_path / "ref.yaml"
    reference_path.write_text(manifest_text(images, tmp_path / "ref", compute=setting))
    run(reference_path)
    child = driver(path, faults="item:img_005.png=hang")
    parts = tmp_path / "out" / "_staging"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(list(parts.rglob("*.parquet"))) < 3:
        time.sleep(0.2)
    time.sleep(2)  # the items queued before the hung one finish
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    saved = {i for p in parts.rglob("*.parquet") for i in pq.read_table(p)["image_id"].to_pylist()}
    resumed = run(path)
    assert len(saved) >= 3 and "img_005.png" not in saved
    assert resumed.items_resumed == len(saved) and resumed.items_in == 8
    assert resumed.run_id in str(next((tmp_path / "out").glob("versions/000001-*")))

    def outputs(out: Path) -> set[tuple]:
        _, index = committed(out)
        return set(zip(index.image_id, index.variant, index.output_sha256, strict=True))

    mismatches = len(outputs(tmp_path / "out") ^ outputs(tmp_path / "ref"))
    assert mismatches == 0
    assert digest_at(tmp_path / "out") == digest_at(tmp_path / "ref")
    matrix.record(
        items_in=8,
        items_ok=resumed.items_ok,
        items_quarantined=resumed.items_quarantined,
        items_saved_before_kill=len(saved),
        items_resumed=resumed.items_resumed,
        mismatches=mismatches,
    )


@pytest.mark.matrix("P7")
def test_two_runs_at_once_exactly_one_commits(moto_s3, tmp_path, matrix):
    """Two drivers (each with its own Ray) race for version 1 of one S3 dataset."""
    from conftest import manifest_text, pipeline_cli

    images = tmp_path / "images"
    write_images(images, 4)
    path = tmp_path / "m.yaml"
    out = f"s3://faults-out/race-{os.getpid()}-{time.monotonic_ns()}"
    compute = "compute: {actors: 1, batch_size: 2, max_error_rate: 0.0}"
    path.write_text(manifest_text(images, Path("unused"), compute=compute))
    args = [
        str(path),
        "--set",
        f"output.uri={out}",
        "--set",
        f"output.storage_options={{endpoint_url: '{moto_s3.endpoint_url}'}}",
    ]
    # The slow run holds its commit open after writing its files, so the other one commits
    # first and the slow one meets the create-only commit record, not an early check.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(
            pipeline_cli,
            *args,
            env={**moto_s3.env(), "SYNTHFILL_FAULTS": "commit:version-files=sleep:15"},
        )
        time.sleep(2)
        fast = pool.submit(pipeline_cli, *args, env=moto_s3.env())
        results = [fast.result(timeout=300), slow.result(timeout=300)]
    codes = [code for code, _, _ in results]
    winners = codes.count(0)
    assert sorted(codes) == [0, 1], [r[2][-1500:] for r in results]
    loser = results[codes.index(1)]
    assert "another run" in loser[1]["message"] and "committed version 1" in loser[1]["message"]
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=moto_s3.endpoint_url, **_moto_keys(moto_s3))
    root = out.removeprefix("s3://")
    marker = json.loads(fs.cat_file(f"{root}/_COMMITTED"))
    index = pq.read_table(f"{root}/{marker['index']}", filesystem=fs)
    assert marker["version"] == 1 and index.num_rows == 4 * 2
    assert fs.exists(f"{root}/versions/000001.json") and not fs.exists(
        f"{root}/versions/000002.json"
    )
    matrix.record(
        winners=winners,
        loser_exit=1,
        loser_message=loser[1]["message"][:200],
        items_in=4,
        items_ok=index.num_rows // 2,
        items_quarantined=0,
        duplicates=index.num_rows
        - len(set(zip(index["image_id"].to_pylist(), index["variant"].to_pylist(), strict=True))),
    )


def _moto_keys(server) -> dict:
    return {"key": server.access_key, "secret": server.secret_key}


def test_status_lists_versions_interrupted_runs_and_pending_work(
    ray_local, tmp_path, tiny_manifest
):
    path = tiny_manifest(count=3)
    first = run(path)
    add_images(tmp_path / "images", 3, 2)
    (tmp_path / "out/_staging/dead-run/parts").mkdir(parents=True)  # a run killed at once
    done = subprocess.run(
        [str(ROOT / ".venv/bin/pipeline"), "status", str(path), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["latest"] == report["pointer"] == 1
    assert [v["run_id"] for v in report["versions"]] == [first.run_id]
    assert report["versions"][0]["items_ok"] == 3
    assert [r["run_id"] for r in report["interrupted"]] == ["dead-run"]
    pending = report["pending"]
    assert (pending["new"], pending["unchanged"], pending["processing"]) == (2, 3, 2)
    text = subprocess.run(
        [str(ROOT / ".venv/bin/pipeline"), "status", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert text.returncode == 0 and "interrupted run dead-run" in text.stdout
    assert first.run_id[:8] in text.stdout


def test_an_abandoned_runs_leftovers_are_swept_at_the_next_commit(
    ray_local, tmp_path, tiny_manifest
):
    path = tiny_manifest(count=2)
    run(path)
    out = tmp_path / "out"
    # a run of another recipe died after writing an output: its staging says so
    staging = out / "_staging/20260101T000000Z-dead0000"
    staging.mkdir(parents=True)
    (staging / "plan.json").write_text(json.dumps({"run_id": "x", "manifest_sha256": "other"}))
    stray = out / "images/ab/img_009.png__v000-deadbeef.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"written by the dead run")
    for leftover in (stray, staging / "plan.json"):
        os.utime(leftover, (time.time() - 600, time.time() - 600))
    add_images(tmp_path / "images", 2, 1)
    summary = run(path)
    assert (summary.version, summary.items_in) == (2, 1)
    assert not stray.exists() and not staging.exists()
    _, index = committed(out)
    on_disk = {p.as_uri() for p in (out / "images").rglob("*.png")}
    assert on_disk == set(index.output_uri)


def test_parquet_reads_of_python_files_stay_in_the_calling_thread(tmp_path):
    """Arrow's IO pool must never read an fsspec file: a pool thread that drops a Python buffer
    while the interpreter exits aborts the process (exit -6 after a committed run)."""
    import threading

    import fsspec

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": range(5000), "b": ["x"] * 5000}), path, row_group_size=1000)
    caller = threading.get_ident()

    class Recording:
        def __init__(self, handle):
            self.handle, self.threads = handle, set()

        def read(self, n=-1):
            self.threads.add(threading.get_ident())
            return self.handle.read(n)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    fs = fsspec.filesystem("file")
    with fs.open(str(path), "rb") as handle:
        arrow_default = Recording(handle)
        with pq.ParquetFile(arrow_default) as parquet:
            parquet.read_row_group(1, use_threads=False)
    # the hazard is real in this pyarrow: its default reads on other threads
    assert arrow_default.threads - {caller}
    with fs.open(str(path), "rb") as handle:
        ours = Recording(handle)
        with parquet_file(ours) as parquet:
            assert parquet.read_row_group(1, use_threads=False)["a"][0].as_py() == 1000
            assert parquet.read(use_threads=False).num_rows == 5000
    assert ours.threads == {caller}
    assert read_parquet(fs, str(path), ["a"]).num_rows == 5000
