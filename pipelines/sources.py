"""Sources over fsspec: a sorted, stable listing and annotations joined by ``image_id``."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines import credentials, versions
from pipelines.errors import ItemError, Reason, RunError
from pipelines.inventory import read_inventory
from pipelines.listing import (
    ListingCounts,
    Selector,
    found_table,
    list_in_parallel,
    parallel_listing,
    uri_prefix,
)
from pipelines.manifest import SourceSpec
from pipelines.pseudonyms import pseudonym_key, pseudonymize

SKU110K_COLUMNS = ("image_name", "x1", "y1", "x2", "y2", "class", "image_width", "image_height")


@dataclass(frozen=True)
class SourceItem:
    """One source image: a stable id (path relative to the source root) and where to read it."""

    image_id: str
    uri: str
    size: int
    # As the store reported it, quotes stripped; the md5 of the bytes only for single-part S3
    # uploads (multipart ETags end in "-<parts>", GCS ETags are opaque). None when not known.
    etag: str | None = None
    # With source.pseudonymize: the real path relative to the root, to read from; image_id and
    # uri then hold the pseudonym. Never written to a row.
    source_key: str | None = None


@dataclass(frozen=True)
class Annotations:
    """Boxes of one image: float ``(N, 4)`` x1, y1, x2, y2 in pixels, with a label each."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: tuple[str, ...] = ()


def filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (RunError when unavailable).

    ``${NAME}`` references in ``storage_options`` are resolved from this process's environment
    here, at the last moment, so the resolved secrets live only inside the filesystem object.
    """
    options = s3_defaults(uri, credentials.resolve(storage_options, os.environ))
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:  # e.g. gcsfs or adlfs not installed
        raise RunError(f"cannot open {uri!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RunError(
            f"cannot open {uri!r} with storage_options {sorted(storage_options)}: {exc}"
        ) from None


# botocore's "standard" retries (500, 503 SlowDown, throttling, resets, timeouts), 4 attempts in
# all: a transient fault costs about a second; a persistent 500 fails an operation in ~4 s, a
# reset in ~5 s. s3fs repeats whole SlowDown rounds 5 times (20 attempts, ~20 s), no other 5xx.
S3_RETRIES = {"mode": "standard", "total_max_attempts": 4}


def s3_defaults(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` plus our S3 retry defaults, unless the user chose retries themselves.

    The user's choice is ``config_kwargs: {retries: ...}`` in storage_options, or botocore's own
    ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE`` variables (which an explicit config would override).
    """
    chosen = "AWS_MAX_ATTEMPTS" in os.environ or "AWS_RETRY_MODE" in os.environ
    config = options.get("config_kwargs") or {}
    if chosen or not uri.startswith(("s3://", "s3a://")) or "retries" in config:
        return options
    return {**options, "config_kwargs": {**config, "retries": dict(S3_RETRIES)}}


def list_sources(spec: SourceSpec) -> list[SourceItem]:
    """List the images under ``spec.uri`` matching the glob and extensions, sorted by image_id.

    One Python object per image: for small sources. Large runs use ``source_table``.
    """
    items, _ = source_table(spec)
    return [SourceItem(**row) for row in items.to_pylist()]


def source_table(spec: SourceSpec, *, parallel: bool = True) -> tuple[pa.Table, ListingCounts]:
    """The items of ``spec`` as one Arrow table (``ITEM_SCHEMA``) sorted by image_id, with counts.

    Read from ``spec.inventory`` when given, else listed under ``spec.uri``; S3 roots are listed
    per sub-prefix in parallel for recursive globs (``parallel=False`` lists serially, as the
    reference the parallel listing must equal).

    With ``spec.pseudonymize`` image_id and uri hold keyed pseudonyms and an extra column,
    ``source_key``, the real relative path that workers read (``pipelines.pseudonyms``).
    """
    key = pseudonym_key(spec.pseudonym_key) if spec.pseudonymize and spec.pseudonym_key else None
    fs, root = filesystem(spec.uri, spec.storage_options)
    root = root.rstrip("/")
    selector = Selector(root, uri_prefix(fs, root), spec.glob, spec.extensions)
    if spec.inventory:
        inventory_fs, path = filesystem(spec.inventory, spec.storage_options)
        for found in read_inventory(inventory_fs, path, spec.inventory, root):
            selector.add(found)
        items, counts = selector.finish(spec.inventory)
    else:
        for found in _listed(fs, root, spec, parallel):
            selector.add(found)
        items, counts = selector.finish()
    if key is not None:
        items = pseudonymize(items, key, spec.extensions, selector.uri_prefix)
    return items, counts


def _listed(
    fs: fsspec.AbstractFileSystem, root: str, spec: SourceSpec, parallel: bool
) -> Iterator[pa.Table]:
    unreadable = RunError(f"source.uri {spec.uri!r} is not a readable folder")
    try:
        if parallel and spec.glob.startswith("**") and parallel_listing(fs):
            # No isdir first: on S3 it pages through the whole root and caches every entry.
            tables = list(list_in_parallel(fs, root))
            if any(table.num_rows for table in tables) or fs.isdir(root):
                return iter(tables)
            raise unreadable
        if not fs.isdir(root):
            raise unreadable
        # The root is literal: brackets or stars in a folder name are not a pattern.
        found = fs.glob(posixpath.join(glob.escape(root), spec.glob), detail=True)
    except RunError:
        raise
    except Exception as exc:  # OSError, and botocore's own (EndpointConnectionError is not one)
        raise RunError(
            f"cannot list source.uri {spec.uri!r}: {type(exc).__name__}: {exc}"
            + credentials.access_hint(exc)
        ) from exc
    return iter([found_table(found.values())])


READ_ATTEMPTS = 3  # whole reads of one object before a body that fails its checks is given up
_PLAIN_MD5 = re.compile(r'(?:W/)?"?([0-9a-fA-F]{32})"?')  # multipart ETags end in "-<parts>"
_log = logging.getLogger("synthfill")


def read_bytes(
    uri: str, storage_options: dict[str, Any], *, size: int | None = None, etag: str | None = None
) -> bytes:
    """Read a whole object and check it is the object the listing described.

    A body whose length differs from ``size`` (the listed size; 0 or None: unknown), whose md5
    differs from an ``etag`` that is a plain md5, or that failed the storage library's checksum is
    read again, at most READ_ATTEMPTS times in all, then refused with ItemError(read_error): a
    partial body is never returned to be decoded. Errors the storage library already retried
    (5xx, throttling, resets) propagate to the caller's guard.
    """
    fs, path = filesystem(uri, storage_options)
    return read_object(fs, path, size=size, etag=etag)


def read_object(
    fs: fsspec.AbstractFileSystem,
    path: str,
    *,
    size: int | None = None,
    etag: str | None = None,
    label: str | None = None,
) -> bytes:
    """``read_bytes`` on a filesystem already open: the path is a key, never parsed as a URL
    (``::`` or ``?`` in a key would otherwise chain filesystems or select a version).

    ``label`` names the object in errors and log lines instead of its URI (a pseudonymous
    source's URI would carry the real name).
    """
    label = label or fs.unstrip_protocol(path)
    problem = ""
    for attempt in range(READ_ATTEMPTS):
        if attempt:
            _log.warning("%s: %s; reading it again", label, problem)
            time.sleep(0.2 * attempt)  # a proxy or load balancer cutting bodies may recover
        data, problem = _read_checked(fs, path, size, etag, label)
        if not problem:
            return data
    raise ItemError(
        Reason.READ_ERROR, f"{label}: {problem} (on each of {READ_ATTEMPTS} reads)", "read"
    )


def _read_checked(
    fs: fsspec.AbstractFileSystem, path: str, size: int | None, etag: str | None, label: str
) -> tuple[bytes, str]:
    """One whole read and why its bytes are not the listed object ('' when they are)."""
    from botocore.exceptions import FlexibleChecksumError  # s3fs depends on botocore

    # One GET per read on S3: s3fs would otherwise HEAD first and, above one block, fill a
    # buffer of the listed length from ranged GETs, where a short range leaves zeros that pass
    # the size check. One GET is length-checked by the client and retried by s3fs.
    single = "s3" in fs.protocol
    try:
        data = fs.cat_file(path, max_concurrency=1) if single else fs.cat_file(path)
    except FlexibleChecksumError as exc:  # the body did not match the checksum S3 stored
        return b"", f"corrupt in transit ({exc})"
    if size and len(data) > size:  # more bytes than listed: no transport fault does that
        raise ItemError(
            Reason.SOURCE_CHANGED, f"{label}: {len(data)} bytes now, {size} when listed", "read"
        )
    if size and len(data) < size:
        _check_unchanged_size(fs, path, size, label)
        return data, f"read {len(data)} bytes but the listing said {size} (cut short)"
    listed = _PLAIN_MD5.fullmatch(etag or "")
    if listed and hashlib.md5(data, usedforsecurity=False).hexdigest() != listed.group(1).lower():
        _check_unchanged(fs, path, str(etag), label)
    return data, ""


def _check_unchanged_size(fs: fsspec.AbstractFileSystem, path: str, size: int, label: str) -> None:
    """A short body: cut in transit (read again) or a smaller object now (source_changed)?"""
    current = fs.info(path, refresh=True).get("size") if "s3" in fs.protocol else fs.size(path)
    if current is not None and int(current) != size:
        raise ItemError(
            Reason.SOURCE_CHANGED, f"{label}: {current} bytes now, {size} when listed", "read"
        )


def _check_unchanged(fs: fsspec.AbstractFileSystem, path: str, etag: str, label: str) -> None:
    """The bytes' md5 is not the listed ETag: was the object replaced, or is it encrypted?

    With SSE-KMS or SSE-C even a single-PUT ETag is not the md5 of the content, so the object's
    current ETag decides: the same as listed means the same object (its size matched too).
    """
    current = str(fs.info(path, refresh=True).get("ETag", ""))
    if current.strip('"').lower() != etag.strip('"').lower():
        raise ItemError(
            Reason.SOURCE_CHANGED,
            f"{label}: ETag {current} now, {etag} when listed; re-run to pick up the new object",
            "read",
        )


def load_annotations(uri: str, storage_options: dict[str, Any]) -> dict[str, Annotations]:
    """Boxes per image_id from COCO JSON, SKU-110K CSV or Parquet (by extension)."""
    fs, path = filesystem(uri, storage_options)
    try:
        # Checked against the listed size: a body cut short would silently drop boxes.
        data = read_bytes(uri, storage_options, size=fs.size(path))
    except (OSError, ItemError) as exc:
        raise RunError(
            f"cannot read source.annotations {uri!r}: {exc}" + credentials.access_hint(exc)
        ) from exc
    lower = path.lower()
    try:
        if lower.endswith(".json"):
            return _from_coco(json.loads(data), uri)
        if lower.endswith(".csv"):
            return _from_table(pd.read_csv(io.BytesIO(data)), uri)
        if lower.endswith(".parquet"):
            parquet = versions.parquet_file(io.BytesIO(data))  # in this thread, not Arrow's pool
            return _from_table(parquet.read(use_threads=False).to_pandas(), uri)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # malformed JSON / CSV / Parquet
        raise RunError(f"cannot parse source.annotations {uri!r}: {exc}") from None
    raise RunError(f"source.annotations {uri!r}: expected a .json (COCO), .csv or .parquet file")


def _from_table(frame: pd.DataFrame, uri: str) -> dict[str, Annotations]:
    missing = [c for c in SKU110K_COLUMNS[:6] if c not in frame.columns]
    if missing:
        raise RunError(
            f"{uri}: missing SKU-110K columns {missing}; expected {list(SKU110K_COLUMNS)}"
        )
    out: dict[str, Annotations] = {}
    for name, group in frame.groupby("image_name", sort=True):
        boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        out[str(name)] = Annotations(boxes, tuple(str(c) for c in group["class"]))
    return out


def _from_coco(doc: dict[str, Any], uri: str) -> dict[str, Annotations]:
    try:
        names = {img["id"]: img["file_name"] for img in doc["images"]}
        categories = {c["id"]: c["name"] for c in doc.get("categories", [])}
        rows: dict[str, list[tuple[list[float], str]]] = {name: [] for name in names.values()}
        for ann in doc.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            rows[names[ann["image_id"]]].append(([x, y, x + w, y + h], label))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{uri}: not a COCO detection file ({exc!r})") from exc
    return {
        name: Annotations(
            np.array([b for b, _ in r], dtype=np.float64).reshape(-1, 4), tuple(lbl for _, lbl in r)
        )
        for name, r in sorted(rows.items())
    }
