"""Inventory sources (S3 Inventory manifests, plain key tables) against real listings.

Every inventory here is built from what a real store reports (moto's S3 on loopback, or a local
folder), so "same items as a listing" compares our reading of an inventory with an actual listing.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import manifest_text, write_images

from pipelines.errors import RunError
from pipelines.manifest import SourceSpec
from pipelines.sources import list_sources, source_table

# keys under the source root (with characters CSV inventories URL-encode), and others
KEYS = ["a/1.png", "a/b/2.jpg", "c/3.PNG", "c/notes.txt", "e f/4.png", "g+h/5.png", "top.webp"]
OUTSIDE = ["elsewhere/6.png", "rootless.png", "root2/7.png"]
CSV_SCHEMA = "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on loopback with bucket ``src`` (root/ + outsiders) and an empty ``inv``."""
    from s3_servers import MotoS3

    saved = dict(os.environ)
    with MotoS3(buckets=["src", "inv"]) as server:
        os.environ.update(server.env())
        client = server.client()
        for key in KEYS:
            client.put_object(Bucket="src", Key=f"root/{key}", Body=f"bytes of {key}".encode())
        for key in OUTSIDE:
            client.put_object(Bucket="src", Key=key, Body=b"x")
        yield server
    os.environ.clear()
    os.environ.update(saved)


def listed_objects(s3) -> list[dict]:
    """Every object of bucket src as S3 reports it (what an inventory of the bucket holds)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket="src")
    return [obj for page in pages for obj in page.get("Contents", [])]


def spec_for(s3, **fields) -> SourceSpec:
    options = {"endpoint_url": s3.endpoint_url}
    return SourceSpec(uri="s3://src/root", storage_options=options, **fields)


def put(s3, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket="inv", Key=key, Body=data)


def s3_csv_rows(objects: list[dict]) -> list[list[str]]:
    """Rows as S3 Inventory writes them: URL-encoded keys, ETag without quotes, plus history."""
    rows = []
    for obj in objects:
        key, etag = quote_plus(obj["Key"], safe="/"), obj["ETag"].strip('"')
        rows.append(["src", key, "v2", "true", "false", str(obj["Size"]), "2026-11-22", etag])
        rows.append(["src", key, "v1", "false", "false", "3", "2026-11-21", "0" * 32])
    rows.append(["src", "root/a/gone.png", "v9", "true", "true", "", "2026-11-22", ""])
    return rows


def gzip_csv(rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(rows)
    return gzip.compress(text.getvalue().encode())


def s3_manifest(fmt: str, schema: str, keys: list[str]) -> bytes:
    files = [{"key": key, "size": 1, "MD5checksum": "0" * 32} for key in keys]
    doc = {
        "sourceBucket": "src",
        "destinationBucket": "arn:aws:s3:::inv",
        "version": "2016-11-30",
        "fileFormat": fmt,
        "fileSchema": schema,
        "files": files,
    }
    return json.dumps(doc).encode()


def test_s3_inventory_csv_gives_the_listing(s3):
    rows = s3_csv_rows(listed_objects(s3))
    half = len(rows) // 2  # two data files, as large inventories are split
    prefix = "inventories/src/daily"
    put(s3, f"{prefix}/data/part-0.csv.gz", gzip_csv(rows[:half]))
    put(s3, f"{prefix}/data/part-1.csv.gz", gzip_csv(rows[half:]))
    data = [f"{prefix}/data/part-0.csv.gz", f"{prefix}/data/part-1.csv.gz"]
    put(s3, f"{prefix}/2026-11-22T00-00Z/manifest.json", s3_manifest("CSV", CSV_SCHEMA, data))
    inventory = f"s3://inv/{prefix}/2026-11-22T00-00Z/manifest.json"

    from_inventory, counts = source_table(spec_for(s3, inventory=inventory))
    from_listing, _ = source_table(spec_for(s3))
    assert from_inventory.equals(from_listing)
    assert "e f/4.png" in from_inventory["image_id"].to_pylist()  # "+" decoded to a space
    assert "g+h/5.png" in from_inventory["image_id"].to_pylist()  # "%2B" decoded to "+"
    assert all(from_inventory["etag"].to_pylist())  # the listing's ETags, quotes stripped
    assert counts.inventory == inventory
    # current objects only: old versions and the delete marker were never counted
    assert counts.found == len(KEYS) + len(OUTSIDE)
    assert counts.outside_root == len(OUTSIDE) and counts.not_matching == 1  # notes.txt
    assert list_sources(spec_for(s3, inventory=inventory)) == list_sources(spec_for(s3))


def test_s3_inventory_parquet_copied_to_a_local_disk(s3, tmp_path):
    objects = listed_objects(s3)
    table = pa.table(
        {
            "bucket": ["src"] * len(objects),
            "key": [o["Key"] for o in objects],  # Parquet inventories do not URL-encode
            "size": pa.array([o["Size"] for o in objects], pa.int64()),
            "e_tag": [o["ETag"].strip('"') for o in objects],
            "storage_class": ["STANDARD"] * len(objects),
        }
    )
    # `aws s3 sync s3://inv/inventories ./copy` keeps the keys' folders
    data_key = "inventories/src/daily/data/part-0.parquet"
    (tmp_path / data_key).parent.mkdir(parents=True)
    pq.write_table(table, tmp_path / data_key)
    manifest = tmp_path / "inventories/src/daily/2026-11-22T00-00Z/manifest.json"
    manifest.parent.mkdir(parents=True)
    schema = "message s3.inventory { required binary bucket (UTF8); required binary key (UTF8); }"
    manifest.write_bytes(s3_manifest("Parquet", schema, [data_key]))

    from_inventory, counts = source_table(spec_for(s3, inventory=str(manifest)))
    assert from_inventory.equals(source_table(spec_for(s3))[0])
    assert counts.outside_root == len(OUTSIDE)


@pytest.mark.parametrize("glob", ["**/*.png", "a/**/*", "*", "c/[0-9].*"])
def test_glob_and_extensions_select_as_a_listing_does(s3, glob):
    objects = listed_objects(s3)
    table = pa.table(
        {"key": [o["Key"] for o in objects], "size": [o["Size"] for o in objects]}
        | {"etag": [o["ETag"] for o in objects]}  # quoted, as a listing export may keep them
    )
    put(s3, "exports/keys.parquet", _parquet_bytes(table))
    spec = spec_for(
        s3, glob=glob, extensions=(".png", ".jpg"), inventory="s3://inv/exports/keys.parquet"
    )
    from_inventory, _ = source_table(spec)
    from_listing, _ = source_table(spec.model_copy(update={"inventory": None}))
    assert from_inventory.equals(from_listing)
    assert from_inventory.num_rows > 0 or glob == "*"


def test_gcs_style_csv_with_a_header_for_a_local_folder(tmp_path):
    folder = tmp_path / "images"
    for name in ("x/1.png", "x/2.jpg", "y/3.png", "skip.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"pixels " + name.encode())
    (tmp_path / "beside.png").write_bytes(b"not under source.uri")
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    inventory = tmp_path / "inventory.csv.gz"
    rows = [["name", "size", "storageClass"]] + [
        [str(p), str(p.stat().st_size), "X"] for p in files
    ]
    inventory.write_bytes(gzip_csv(rows))

    spec = SourceSpec(uri=str(folder), inventory=str(inventory))
    # the same items; only a listing knows local files' size-mtime change tokens
    columns = ["image_id", "uri", "size"]
    listed = source_table(SourceSpec(uri=str(folder)))[0].select(columns)
    assert source_table(spec)[0].select(columns).equals(listed)
    assert source_table(spec)[1].outside_root == 1  # beside.png


def test_repeated_keys_are_counted_and_read_once(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    inventory = tmp_path / "keys.csv"
    inventory.write_text(f"key,size\n{tmp_path}/a.png,1\n{tmp_path}/a.png,1\n")
    items, counts = source_table(SourceSpec(uri=str(tmp_path), inventory=str(inventory)))
    assert items["image_id"].to_pylist() == ["a.png"] and counts.duplicates == 1


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("manifest.json", b'{"fileFormat": "CSV", "files": []}', "needs fileFormat, fileSchema"),
        ("manifest.json", b"not json", "not an S3 Inventory manifest.json"),
        (
            "manifest.json",
            s3_manifest("CSV", "Bucket, Name2, Size", ["d.csv.gz"]),
            "no key column; name one of",
        ),
        ("manifest.json", s3_manifest("ORC", "struct<bucket:string>", []), "as CSV or Parquet"),
        ("keys.txt", b"key\na.png\n", "expected an S3 Inventory manifest.json, or a .csv"),
        ("keys.csv", b"file,bytes\na.png,1\n", "found ['file', 'bytes']"),
        ("keys.csv", b"", "the CSV is empty"),
        ("keys.csv", b"key,size\na.png,1,extra\n", "cannot parse"),
        ("keys.parquet", b"PAR1 not really", "is not Parquet"),
        (
            "keys.parquet",
            _parquet_bytes(pa.table({"key": ["a.png"], "size": ["one kilobyte"]})),
            "cannot read the columns",
        ),
    ],
)
def test_malformed_inventories_say_what_to_fix(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    spec = SourceSpec(uri=str(tmp_path), inventory=str(tmp_path / name))
    with pytest.raises(RunError, match=message.replace("[", r"\[").replace("(", r"\(")):
        source_table(spec)


def test_manifest_data_file_missing_from_a_local_copy_is_named(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(s3_manifest("CSV", CSV_SCHEMA, ["inventories/data/gone.csv.gz"]))
    with pytest.raises(RunError, match="inventories/data/gone.csv.gz"):
        source_table(SourceSpec(uri=str(tmp_path), inventory=str(manifest)))


def test_missing_inventory_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="cannot read source.inventory"):
        source_table(SourceSpec(uri=str(tmp_path), inventory=str(tmp_path / "none.csv")))


def test_relative_inventory_resolves_against_the_manifest(tmp_path):
    from pipelines.manifest_loader import load_manifest

    write_images(tmp_path / "images", 2)
    lines = ["key,size\n"] + [f"{p},1\n" for p in sorted((tmp_path / "images").iterdir())]
    (tmp_path / "keys.csv").write_text("".join(lines))
    source = f'source: {{uri: "{tmp_path / "images"}", inventory: keys.csv}}'
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text(tmp_path / "images", tmp_path / "out", source=source))
    loaded = load_manifest(path)
    assert loaded.manifest.source.inventory == str(tmp_path / "keys.csv")
    unchanged = load_manifest(path, ["source.inventory=null"]).fingerprint
    assert loaded.fingerprint == unchanged  # where the keys come from is not the recipe


def keys_csv(images: Path, target: Path, extra: tuple[str, ...] = ()) -> Path:
    """A GCS-style inventory (name,size) of every file in ``images`` plus ``extra`` paths."""
    files = sorted(images.iterdir())
    rows = [f"{p},{p.stat().st_size}\n" for p in files] + [f"{e},1\n" for e in extra]
    target.write_text("name,size\n" + "".join(rows))
    return target


def test_a_run_from_an_inventory_equals_a_run_from_the_listing(ray_local, tmp_path, tiny_manifest):
    from pipelines.manifest_loader import load_manifest
    from pipelines.run import run_manifest

    path = tiny_manifest(count=5)
    keys = keys_csv(tmp_path / "images", tmp_path / "keys.csv", extra=("/elsewhere/x.png",))
    listed = run_manifest(load_manifest(path, [f"output.uri={tmp_path / 'a'}"]))
    read = run_manifest(
        load_manifest(path, [f"output.uri={tmp_path / 'b'}", f"source.inventory={keys}"])
    )
    assert listed.status == read.status == "committed" and read.items_in == 5
    key = ["image_id", "variant"]
    a, b = (pq.read_table(tmp_path / p / "index.parquet").to_pandas() for p in "ab")
    a, b = (frame.set_index(key).sort_index() for frame in (a, b))
    for column in ("seed", "split", "source_uri", "source_sha256", "output_sha256", "mask_sha256"):
        assert a[column].equals(b[column]), column
    assert a["manifest_sha256"].equals(b["manifest_sha256"])  # same recipe, same keys


def test_plan_reports_the_inventory_counts(tmp_path):
    from test_cli import pipeline

    write_images(tmp_path / "images", 3)
    keys = keys_csv(tmp_path / "images", tmp_path / "keys.csv", extra=("/elsewhere/x.png",))
    source = f'source: {{uri: "{tmp_path / "images"}", inventory: "{keys}"}}'
    path = tmp_path / "m.yaml"
    path.write_text(manifest_text(tmp_path / "images", tmp_path / "out", source=source))
    result = pipeline("plan", str(path))
    assert result.returncode == 0, result.stderr
    assert "4 read: 1 outside source.uri (skipped)" in result.stdout
    assert "sources found" in result.stdout and " 3 " in result.stdout


def test_an_empty_data_file_of_an_s3_inventory_adds_no_keys(tmp_path):
    data = tmp_path / "inventories" / "data"
    data.mkdir(parents=True)
    (data / "empty.csv.gz").write_bytes(gzip.compress(b""))
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(s3_manifest("CSV", CSV_SCHEMA, ["inventories/data/empty.csv.gz"]))
    table, counts = source_table(SourceSpec(uri=str(tmp_path), inventory=str(manifest)))
    assert table.num_rows == 0 and counts.found == 0
