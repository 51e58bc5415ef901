"""End to end on a local Ray: real files in, committed dataset out."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import fsspec
import pandas as pd
import pytest

from pipelines.errors import RunError
from pipelines.manifest_loader import load_manifest
from pipelines.run import run_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
CONTRACT = [
    "image_id",
    "variant",
    "seed",
    "split",
    "source_uri",
    "source_sha256",
    "width",
    "height",
    "mask_kind",
    "mask_params",
    "mask_fraction",
    "mask_uri",
    "mask_sha256",
    "inpainter",
    "inpainter_params",
    "weights_sha256",
    "output_uri",
    "output_sha256",
    "run_id",
    "manifest_sha256",
    "code_version",
    "status",
    "error",
    "elapsed_ms",
]
NEVER_NULL = ["seed", "source_sha256", "output_sha256", "manifest_sha256", "mask_sha256", "split"]


def sha256_of(uri: str) -> str:
    with fsspec.open(uri, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read_index(out: Path) -> pd.DataFrame:
    marker = json.loads((out / "_COMMITTED").read_text())
    return pd.read_parquet(out / marker["index"])


def run(path: Path, *overrides: str, limit: int | None = None):
    return run_manifest(load_manifest(path, list(overrides)), limit=limit)


@pytest.mark.parametrize("name", ["retail_shelf", "aerial_clouds", "cxr_damage"])
def test_shipped_manifest_writes_a_committed_dataset(ray_local, tmp_path, name):
    out = tmp_path / name
    summary = run(ROOT / "manifests" / f"{name}.yaml", f"output.uri={out}", "variants=2", limit=2)
    assert summary.status == "committed", summary.message
    assert summary.items_in == 2 == summary.items_ok + summary.items_quarantined
    index = read_index(out)
    assert set(CONTRACT) <= set(index.columns)
    assert len(index) == summary.rows_written == summary.items_ok * 2
    assert not index.duplicated(["image_id", "variant"]).any()
    assert index[NEVER_NULL].notna().all().all()
    assert (index["status"] == "ok").all()
    for row in index.itertuples():
        assert sha256_of(row.output_uri) == row.output_sha256
        assert sha256_of(row.mask_uri) == row.mask_sha256
    record = json.loads((out / "run.json").read_text())
    assert record["manifest_sha256"] == index["manifest_sha256"].iloc[0]
    assert record["summary"]["items_in"] == 2


def test_retail_rows_drop_the_erased_boxes(ray_local, tmp_path):
    out = tmp_path / "shelf"
    run(ROOT / "manifests/retail_shelf.yaml", f"output.uri={out}", "augment=[]", limit=2)
    index = read_index(out)
    truth = pd.read_csv(ROOT / "samples/shelves/boxes.csv").groupby("image_name").size()
    for row in index.itertuples():
        assert 1 <= len(row.removed_boxes) <= 3
        assert len(row.boxes) + len(row.removed_boxes) == truth[row.image_id]
        assert len(row.labels) == len(row.boxes)


@pytest.mark.matrix("D1")
def test_outputs_do_not_depend_on_actor_count_or_batching(
    ray_local, tmp_path, tiny_manifest, matrix
):
    path = tiny_manifest(
        count=6,
        augment="augment: [{HorizontalFlip: {p: 0.5}}, {RandomBrightnessContrast: {p: 0.5}}]",
    )
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run(path, f"output.uri={a}", "compute.actors=1", "compute.batch_size=1")
    run(path, f"output.uri={b}", "compute.actors=2", "compute.batch_size=4")
    run(path, f"output.uri={c}", "compute.actors=2", "seed=12")
    key = ["image_id", "variant"]
    ia, ib, ic = (read_index(p).set_index(key).sort_index() for p in (a, b, c))
    assert len(ia) == 12
    same = ["output_sha256", "mask_sha256", "seed", "split", "augment_params", "mask_info"]
    for column in same:
        assert ia[column].equals(ib[column]), column
    assert ia["boxes"].map(str).equals(ib["boxes"].map(str))
    assert (ia["output_sha256"] != ic["output_sha256"]).all()
    # The bytes on disk, not only what the index says about them.
    files = [
        (sha256_of(x.output_uri), sha256_of(y.output_uri))
        for x, y in zip(ia.itertuples(), ib.itertuples(), strict=True)
    ]
    mismatches = sum(
        x != y or x != row for (x, y), row in zip(files, ia["output_sha256"], strict=True)
    )
    assert mismatches == 0
    matrix.record(
        items_in=6,
        items_ok=len(ia) // 2,
        items_quarantined=0,
        duplicates=int(ia.index.duplicated().sum() + ib.index.duplicated().sum()),
        canary_hits=0,
        index_sha256_equal=index_digest(ia) == index_digest(ib),
        output_sha256_mismatches=mismatches,
        configurations=["actors=1 batch=1", "actors=2 batch=4"],
    )
    assert index_digest(ia) == index_digest(ib)


# Columns that name a run or its timing, or the folder it wrote to; everything else in an
# index is a function of the manifest, the seed and the sources.
RUN_SPECIFIC = {"run_id", "elapsed_ms", "output_uri", "mask_uri", "inpaint_device"}


def index_digest(index: pd.DataFrame) -> str:
    """sha256 of an index's content, minus run-specific columns, in (image_id, variant) order."""
    columns = sorted(set(index.columns) - RUN_SPECIFIC)
    table = index.reset_index().sort_values(["image_id", "variant"])[
        sorted({*columns, "image_id", "variant"})
    ]
    return hashlib.sha256(table.to_json(orient="records").encode()).hexdigest()


def test_bad_inputs_are_quarantined_and_counted(ray_local, tmp_path, tiny_manifest):
    from badinputs import write_bad_inputs

    expected = write_bad_inputs(tmp_path / "images")
    exts = sorted(
        {Path(n).suffix for n in expected}
    )  # .gif/.fits too: they must be refused, not skipped
    source = f'source: {{uri: "{tmp_path / "images"}", glob: "*", extensions: {exts}}}'
    path = tiny_manifest(
        count=0, source=source, compute="compute: {actors: 2, batch_size: 3, max_error_rate: 1.0}"
    )
    summary = run(path)
    assert summary.status == "committed"
    assert summary.items_in == len(expected)
    assert summary.items_ok + summary.items_quarantined == summary.items_in
    quarantine = pd.read_parquet(tmp_path / "out/quarantine.parquet").set_index("image_id")
    index = read_index(tmp_path / "out")
    for name, reason in expected.items():
        if reason is None:
            assert name in set(index["image_id"]), f"{name} should have decoded"
        else:
            assert quarantine.loc[name, "reason"] == reason, name
            assert quarantine.loc[name, "error"]
    assert summary.items_quarantined == sum(r is not None for r in expected.values())


def test_a_rerun_adds_nothing_and_overwrite_rebuilds(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=2)
    first = run(path)
    again = run(path)
    assert (again.status, again.version, again.rows_written) == ("up_to_date", 1, 0)
    second = run(path, "output.overwrite=true")
    assert (second.version, second.items_in, second.new_generation) == (2, 2, True)
    assert len(read_index(tmp_path / "out")) == first.rows_written == second.rows_written


def test_a_commit_whose_pointer_write_failed_is_completed_by_the_next_run(
    ray_local, tmp_path, tiny_manifest
):
    path = tiny_manifest(count=2)
    first = run(path)
    # the record was created (committed) but writing the pointer failed, and the run had
    # left a file behind before it committed
    (tmp_path / "out" / "_COMMITTED").unlink()
    stale = tmp_path / "out" / "images" / "00" / "left-over.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"from the failed run")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    again = run(path)
    assert again.status == "up_to_date" and len(read_index(tmp_path / "out")) == first.rows_written
    assert json.loads((tmp_path / "out/_COMMITTED").read_text())["version"] == 1
    assert not stale.exists()  # nothing no committed row points to survives


def test_foreign_folder_is_never_overwritten(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_text("precious")
    with pytest.raises(RunError, match="did not write"):
        run(path, "output.overwrite=true")
    assert (tmp_path / "out" / "thesis.docx").read_text() == "precious"


def test_error_rate_above_limit_commits_nothing(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=3)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image at all")
    summary = run(path)
    assert summary.status == "failed"
    assert summary.items_quarantined == 1 and summary.items_ok == 3
    assert not (tmp_path / "out" / "_COMMITTED").exists()
    assert "max_error_rate" in summary.message


def test_same_stem_different_extension_never_collide(ray_local, tmp_path, tiny_manifest):
    from conftest import photo_like
    from PIL import Image

    path = tiny_manifest(count=0)
    for ext, seed in (("jpg", 1), ("png", 2)):
        Image.fromarray(photo_like(64, 64, seed)).save(tmp_path / "images" / f"x.{ext}")
    run(path)
    index = read_index(tmp_path / "out")
    assert index["output_uri"].nunique() == len(index) == 4
    for row in index.itertuples():
        assert sha256_of(row.output_uri) == row.output_sha256


def test_unusable_image_id_is_quarantined_not_fatal(ray_local, tmp_path, tiny_manifest):
    path = tiny_manifest(count=2, compute="compute: {actors: 1, max_error_rate: 1.0}")
    (tmp_path / "images" / "a\\b.png").write_bytes(
        (tmp_path / "images" / "img_000.png").read_bytes()
    )
    summary = run(path)
    assert summary.status == "committed" and summary.items_ok == 2
    assert summary.quarantine_reasons == {"bad_image_id": 1}


def test_overwrite_keeps_the_old_dataset_until_the_new_one_commits(
    ray_local, tmp_path, tiny_manifest
):
    path = tiny_manifest(count=3)
    run(path)
    old = read_index(tmp_path / "out")
    (tmp_path / "images" / "broken.png").write_bytes(b"garbage")
    failed = run(path, "output.overwrite=true", "seed=99")
    assert failed.status == "failed"
    assert read_index(tmp_path / "out").equals(old)  # still committed, files intact
    for row in old.itertuples():
        assert sha256_of(row.output_uri) == row.output_sha256
    (tmp_path / "images" / "broken.png").unlink()
    run(path, "output.overwrite=true", "seed=99", "output.keep_versions=1")
    new = read_index(tmp_path / "out")
    files = {str(p) for p in (tmp_path / "out").rglob("*") if p.is_file()}
    files = {f for f in files if "/images/" in f or "/masks/" in f}
    referenced = {fsspec.core.strip_protocol(u) for u in [*new["output_uri"], *new["mask_uri"]]}
    assert files == referenced  # the replaced version's files are gone, nothing orphaned


def test_secrets_never_reach_the_run_record_or_index(ray_local, tmp_path, tiny_manifest):
    canary = "CANARY-7f3a-SECRET"
    path = tiny_manifest(count=2)
    # not a secret option (those are refused unless given as ${NAME}), but still not recorded
    run(path, f"output.storage_options.profile={canary}")
    hits = [
        p
        for p in (tmp_path / "out").rglob("*")
        if p.is_file() and canary.encode() in p.read_bytes()
    ]
    assert hits == []
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["manifest"]["overrides"] == ["output.storage_options.profile=<redacted>"]


def test_user_masks_from_files_are_read_matched_and_recorded(ray_local, tmp_path, tiny_manifest):
    import numpy as np
    from PIL import Image

    masks = tmp_path / "masks"
    masks.mkdir()
    hole = np.zeros((96, 128), np.uint8)
    hole[20:40, 30:70] = 255
    Image.fromarray(hole).save(masks / "img_000.png")
    Image.fromarray(255 - hole).save(masks / "img_001.png")  # inverted: polarity auto fixes it
    spec = f'masks: [{{kind: from_files, uri: "{masks}"}}]'
    path = tiny_manifest(count=3, masks=spec, compute="compute: {actors: 1, max_error_rate: 1.0}")
    summary = run(path)
    assert summary.items_ok == 2 and summary.quarantine_reasons == {"mask_error": 1}
    index = read_index(tmp_path / "out")
    assert np.allclose(index["mask_fraction"], hole.astype(bool).mean())
    for row in index.itertuples():
        with fsspec.open(row.mask_uri, "rb") as handle:
            written = np.asarray(Image.open(handle).convert("L")) > 0
        assert (written == hole.astype(bool)).all()


def test_keys_that_look_like_url_syntax_are_read_as_keys(ray_local, tmp_path, tiny_manifest):
    # fsspec reads "a::b" as a chain of filesystems when it parses a URL: items are read as
    # root + image_id through one open filesystem, never by parsing their URI again.
    path = tiny_manifest(count=2)
    (tmp_path / "images" / "img_001.png").rename(tmp_path / "images" / "shelf::left.png")
    summary = run(path)
    assert summary.status == "committed" and summary.items_ok == 2, summary.quarantine_reasons
    index = read_index(tmp_path / "out")
    assert "shelf::left.png" in set(index["image_id"])
    for row in index.itertuples():
        written = Path(fsspec.core.strip_protocol(row.output_uri)).read_bytes()
        assert hashlib.sha256(written).hexdigest() == row.output_sha256
