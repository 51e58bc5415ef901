"""Inventory files as sources: the objects of a bucket read from a report instead of listed.

Two shapes are read:

* an S3 Inventory ``manifest.json``: its ``fileSchema`` names the columns, ``files`` lists the
  data files (keys in the destination bucket). CSV data files are gzip'd, have no header and
  URL-encode the keys; Parquet data files name their own columns (``bucket, key, size,
  e_tag, ...``). Versioned inventories keep only the latest version and drop delete markers.
* a plain ``.csv`` / ``.csv.gz`` (with a header) or ``.parquet`` table with a key column
  (``key``, ``name`` or ``path``) and optional ``size``, ``etag`` and ``bucket`` columns, as a GCS
  inventory report (``name,size,etag,...``) or any export of a bucket listing gives.

A key names an object in the source's bucket (or in the row's ``bucket``); on a local disk, where
there are no buckets, keys are absolute paths. Rows come out as ``FOUND_SCHEMA`` batches, so an
inventory of millions of keys is never held as Python objects.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines import versions
from pipelines.errors import RunError
from pipelines.listing import FOUND_SCHEMA

KEY_COLUMNS = ("key", "name", "path")  # accepted names of the key column (any case, no "_")
_OPTIONAL = ("bucket", "size", "etag", "islatest", "isdeletemarker")
_BATCH_ROWS = 65_536
_CSV_BLOCK = 8 << 20  # bytes parsed at a time: keeps a multi-GB data file out of memory


def read_inventory(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, source_root: str
) -> Iterator[pa.Table]:
    """The objects an inventory names, as FOUND_SCHEMA tables (``path`` without protocol).

    ``source_root`` is source.uri inside its filesystem: keys without a bucket column belong to
    its bucket. Raises RunError naming what to fix for an unreadable or malformed inventory.
    """
    bucket = "" if source_root.startswith("/") else source_root.split("/", 1)[0]
    lower = path.lower()
    try:
        if lower.endswith(".json"):
            yield from _s3_manifest(fs, path, uri, bucket)
        elif lower.endswith((".csv", ".csv.gz")):
            yield from _csv(fs, path, uri, bucket, names=None, url_encoded=False)
        elif lower.endswith(".parquet"):
            yield from _parquet(fs, path, uri, bucket)
        else:
            raise RunError(
                f"source.inventory {uri!r}: expected an S3 Inventory manifest.json, or a .csv, "
                ".csv.gz or .parquet table with a key (or name) column"
            )
    except (OSError, PermissionError) as exc:
        raise RunError(f"cannot read source.inventory {uri!r}: {exc}") from exc


def _s3_manifest(fs: Any, path: str, uri: str, bucket: str) -> Iterator[pa.Table]:
    try:
        doc = json.loads(fs.cat_file(path))
        fmt, schema, files = doc["fileFormat"], doc["fileSchema"], doc["files"]
        keys = [entry["key"] for entry in files]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(
            f"source.inventory {uri!r} is not an S3 Inventory manifest.json: it needs "
            f"fileFormat, fileSchema and files (each with a key); problem: {exc!r}"
        ) from None
    where = f"{uri} (manifest.json)"
    if str(fmt).lower() == "csv":
        names = [name.strip() for name in str(schema).split(",")]
        _columns(names, f"{where} fileSchema")  # a missing Key column fails before any read
    elif str(fmt).lower() != "parquet":
        raise RunError(
            f"source.inventory {uri!r}: fileFormat {fmt!r} is not read here; configure the "
            "S3 Inventory report as CSV or Parquet"
        )
    home = _destination(doc, path)
    for key in keys:
        data = _data_file(fs, path, home, key, uri)
        if str(fmt).lower() == "csv":
            yield from _csv(fs, data, uri, bucket, names=names, url_encoded=True)
        else:
            yield from _parquet(fs, data, uri, bucket)


def _destination(doc: dict[str, Any], manifest_path: str) -> str:
    """The bucket holding the data files: ``arn:aws:s3:::name`` -> name (default: the manifest's)."""
    arn = str(doc.get("destinationBucket") or "")
    return arn.rsplit(":", 1)[-1] or manifest_path.split("/", 1)[0]


def _data_file(fs: Any, manifest_path: str, home: str, key: str, uri: str) -> str:
    """Where a data file named in the manifest lives.

    In a bucket: ``<destination bucket>/<key>``. A copy on a local disk (``aws s3 sync`` of the
    destination prefix) keeps the keys' folders: the key is looked up under the manifest's folder
    and each of its parents.
    """
    if not manifest_path.startswith("/"):
        return f"{home}/{key}"
    folder = posixpath.dirname(manifest_path)
    while True:
        candidate = posixpath.join(folder, key)
        if fs.exists(candidate):
            return candidate
        if folder in ("/", ""):
            raise RunError(
                f"source.inventory {uri!r}: data file {key!r} named in manifest.json was not "
                "found under the manifest's folder or its parents; copy the inventory with its "
                "data/ folder"
            )
        folder = posixpath.dirname(folder)


def _columns(names: list[str], where: str) -> dict[str, str | None]:
    """Our column roles -> the file's column names (matched ignoring case and underscores)."""
    by_role = {name.lower().replace("_", "").replace(" ", ""): name for name in names}
    key = next((by_role[k] for k in KEY_COLUMNS if k in by_role), None)
    if key is None:
        raise RunError(
            f"{where}: no key column; name one of {list(KEY_COLUMNS)} (S3 Inventory: Key, GCS "
            f"inventory: name), optionally with size, etag and bucket; found {names}"
        )
    return {"key": key} | {role: by_role.get(role) for role in _OPTIONAL}


def _csv(
    fs: Any, path: str, uri: str, bucket: str, names: list[str] | None, url_encoded: bool
) -> Iterator[pa.Table]:
    header = names is None
    if header:
        names = _header(fs, path, uri)
    roles = _columns(names, f"source.inventory {uri}")
    types = {roles["key"]: pa.string(), roles["bucket"]: pa.string(), roles["etag"]: pa.string()}
    types |= {roles["size"]: pa.int64(), roles["islatest"]: pa.bool_()}
    types |= {roles["isdeletemarker"]: pa.bool_()}
    wanted = [name for name in roles.values() if name]
    read = pacsv.ReadOptions(column_names=names, skip_rows=int(header), block_size=_CSV_BLOCK)
    convert = pacsv.ConvertOptions(
        column_types={k: v for k, v in types.items() if k}, include_columns=wanted
    )
    with fs.open(path, "rb", compression="infer") as handle:
        try:
            reader = pacsv.open_csv(handle, read_options=read, convert_options=convert)
            for batch in reader:
                yield _found(batch, roles, bucket, url_encoded)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):  # a data file with no rows (no header to expect)
                return
            raise RunError(
                f"source.inventory {uri!r}: cannot parse {path}: {exc} (do the columns match "
                f"{'the header' if header else 'the manifest fileSchema'}?)"
            ) from None


def _header(fs: Any, path: str, uri: str) -> list[str]:
    with fs.open(path, "rb", compression="infer") as handle:
        line = handle.readline().decode("utf-8-sig", errors="replace")
    names = next(csv.reader(io.StringIO(line)), [])
    if not names:
        raise RunError(f"source.inventory {uri!r}: the CSV is empty (expected a header row)")
    return names


def _parquet(fs: Any, path: str, uri: str, bucket: str) -> Iterator[pa.Table]:
    with fs.open(path, "rb") as handle:
        try:
            parquet = versions.parquet_file(handle)
        except pa.ArrowInvalid as exc:
            raise RunError(f"source.inventory {uri!r}: {path} is not Parquet: {exc}") from None
        roles = _columns(parquet.schema_arrow.names, f"source.inventory {uri} ({path})")
        wanted = [name for name in roles.values() if name]
        try:
            for batch in parquet.iter_batches(
                batch_size=_BATCH_ROWS, columns=wanted, use_threads=False
            ):
                yield _found(batch, roles, bucket, url_encoded=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:  # e.g. size as text
            raise RunError(
                f"source.inventory {uri!r}: cannot read the columns {wanted} of {path}: {exc}"
            ) from None


def _found(
    batch: pa.RecordBatch, roles: dict[str, str | None], bucket: str, url_encoded: bool
) -> pa.Table:
    """One batch of inventory rows as FOUND_SCHEMA: current objects only, full paths."""
    keep = pa.repeat(True, batch.num_rows)
    if roles["islatest"]:  # versioned inventories list every version of a key
        keep = pc.and_(keep, pc.fill_null(batch[roles["islatest"]].cast(pa.bool_()), True))
    if roles["isdeletemarker"]:
        marker = pc.fill_null(batch[roles["isdeletemarker"]].cast(pa.bool_()), False)
        keep = pc.and_(keep, pc.invert(marker))
    batch = batch.filter(keep)
    keys = batch[roles["key"]].cast(pa.string())
    if url_encoded:
        keys = _url_decoded(keys)
    if not bucket:  # a local disk: keys are absolute paths
        paths = pc.binary_join_element_wise("/", pc.utf8_ltrim(keys, characters="/"), "")
    elif roles["bucket"]:
        paths = pc.binary_join_element_wise(batch[roles["bucket"]].cast(pa.string()), keys, "/")
    else:
        paths = pc.binary_join_element_wise(bucket, keys, "/")
    size = batch[roles["size"]].cast(pa.int64()) if roles["size"] else pa.nulls(len(keys))
    etag = batch[roles["etag"]].cast(pa.string()) if roles["etag"] else pa.nulls(len(keys))
    etag = pc.utf8_trim(etag.cast(pa.string()), characters='"')
    etag = pc.if_else(pc.equal(etag, ""), pa.scalar(None, pa.string()), etag)
    size = pc.fill_null(size.cast(pa.int64()), 0)
    return pa.table([paths, size, etag], schema=FOUND_SCHEMA)


def _url_decoded(keys: pa.Array) -> pa.Array:
    """S3 Inventory CSV keys are URL-encoded (a space as ``+``); decode the batches that need it."""
    if not pc.any(pc.match_substring_regex(keys, "[%+]")).as_py():
        return keys
    return pa.array([unquote_plus(k) if k is not None else None for k in keys.to_pylist()])
