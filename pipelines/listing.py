"""Listing a source at scale: objects found (by a listing or an inventory) -> a sorted item table.

Items are kept as one Arrow table (``ITEM_SCHEMA``), never as a Python object per image: at
100 M images a night a dict per item would not fit in the driver. Filtering (root prefix, glob,
extensions) is columnar except for globs more specific than ``**/*``, which run through the
same regular expression ``fsspec`` uses for ``glob``, one batch at a time.

Object stores list at most 1,000 keys per request, so a bucket of millions of objects is listed
per prefix in parallel: the root's sub-prefixes (one or two levels down) are each listed as one
paginated listing, concurrently, on the filesystem's event loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.asyn import sync
from fsspec.utils import glob_translate

ITEM_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size", pa.int64()),
        pa.field("etag", pa.string()),
    ]
)
# What a listing or an inventory found: the path inside the filesystem (no protocol).
FOUND_SCHEMA = pa.schema([("path", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
LIST_CONCURRENCY = 32  # sub-prefix listings in flight at once
EXPAND_LEVELS = 2  # how deep to look for sub-prefixes to list in parallel
_ROWS_PER_BATCH = 50_000  # listed objects converted to Arrow at a time


@dataclass(frozen=True)
class ListingCounts:
    """How many objects a listing or an inventory named, and why some are not items."""

    found: int = 0
    outside_root: int = 0  # inventory keys not under source.uri (other prefixes or buckets)
    not_matching: int = 0  # under the root, but not matching the glob or the extensions
    duplicates: int = 0  # an inventory naming one key twice (e.g. several versions)
    inventory: str | None = None


@dataclass
class Selector:
    """Turns batches of found paths into the sorted items under ``root`` matching the spec."""

    root: str  # path of source.uri inside its filesystem, no trailing slash
    uri_prefix: str  # what turns an image_id back into a URI: uri = uri_prefix + image_id
    glob: str
    extensions: tuple[str, ...]
    counts: dict[str, int] = field(
        default_factory=lambda: {"found": 0, "outside_root": 0, "not_matching": 0}
    )
    _parts: list[pa.Table] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._prefix = self.root + "/"
        # "**/*" matches every object key; anything else goes through fsspec's glob regex.
        self._pattern = None if self.glob == "**/*" else re.compile(glob_translate(self.glob))

    def add(self, found: pa.Table) -> None:
        """Keep the rows of ``found`` (FOUND_SCHEMA) that are items."""
        self.counts["found"] += found.num_rows
        found = found.combine_chunks()
        if not found.num_rows:
            return
        paths = found["path"].chunk(0)
        inside = pc.starts_with(paths, pattern=self._prefix)
        found, paths = found.filter(inside), paths.filter(inside)
        self.counts["outside_root"] += len(inside) - found.num_rows
        # every path starts with the prefix: slicing its length in code points leaves the id
        ids = pc.utf8_slice_codeunits(paths, start=len(self._prefix))
        table = pa.table({"image_id": ids, "size": found["size"], "etag": found["etag"]})
        table = table.filter(self._matches(ids))
        self.counts["not_matching"] += len(ids) - table.num_rows
        self._parts.append(table)

    def _matches(self, ids: pa.Array) -> pa.Array:
        lower = pc.utf8_lower(ids)
        keep = pc.invert(pc.ends_with(ids, pattern="/"))
        by_ext = pa.repeat(False, len(ids))
        for ext in self.extensions:
            by_ext = pc.or_(by_ext, pc.ends_with(lower, pattern=ext))
        keep = pc.and_(keep, by_ext)
        if self._pattern is not None:
            match = self._pattern.match
            keep = pc.and_(keep, pa.array([match(i) is not None for i in ids.to_pylist()]))
        return keep

    def finish(self, inventory: str | None = None) -> tuple[pa.Table, ListingCounts]:
        """The items sorted by image_id (one row per id) and the counts."""
        table = pa.concat_tables(self._parts) if self._parts else _empty_found_items()
        self._parts = []
        table = table.take(pc.sort_indices(table["image_id"]))
        ids = table["image_id"]
        if table.num_rows > 1:
            # sorted: a repeated id sits right after its first occurrence
            first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).combine_chunks()
            if not pc.all(first).as_py():
                table = table.filter(pa.concat_arrays([pa.array([True]), first]))
        self.counts["duplicates"] = len(ids) - table.num_rows
        uri = pc.binary_join_element_wise(self.uri_prefix, table["image_id"], "")
        items = pa.table([table["image_id"], uri, table["size"], table["etag"]], schema=ITEM_SCHEMA)
        del table, ids
        # Sorting and filtering needed scratch of a few times the table; Arrow's allocator would
        # keep it for reuse, the driver has no further use for it.
        pa.default_memory_pool().release_unused()
        return items, ListingCounts(**self.counts, inventory=inventory)


def _empty_found_items() -> pa.Table:
    return pa.table(
        [pa.array([], pa.string()), pa.array([], pa.int64()), pa.array([], pa.string())],
        names=["image_id", "size", "etag"],
    )


def found_table(entries: Iterable[dict[str, Any]]) -> pa.Table:
    """Files among fsspec info dicts as a FOUND_SCHEMA table (directories are left out)."""
    paths, sizes, etags = [], [], []
    for info in entries:
        if info.get("type") == "directory":
            continue
        paths.append(info["name"])
        sizes.append(int(info.get("size") or 0))
        etags.append(etag_of(info))
    return pa.table([paths, sizes, etags], schema=FOUND_SCHEMA)


def etag_of(info: dict[str, Any]) -> str | None:
    """The ETag a store reported (s3fs ``ETag``, others ``etag``), without its quotes.

    Stores without ETags (local files) get ``size-mtime`` instead: a token that changes when
    the file is rewritten, which is all incremental runs need to tell changed sources apart.
    """
    value = info.get("ETag") or info.get("etag")
    if value:
        return str(value).strip('"')
    if info.get("mtime") is not None:
        return f"{int(info.get('size') or 0)}-{float(info['mtime'])!r}"
    return None


def uri_prefix(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """The URI of ``root`` + "/", so that a listed item's URI is this prefix + its image_id."""
    return fs.unstrip_protocol(root + "/x")[:-1]


def parallel_listing(fs: fsspec.AbstractFileSystem) -> bool:
    """True for stores that are listed per prefix in parallel (S3 through s3fs)."""
    return hasattr(fs, "_iterdir") and hasattr(fs, "loop")


def list_in_parallel(
    fs: fsspec.AbstractFileSystem, base: str, concurrency: int = LIST_CONCURRENCY
) -> Iterator[pa.Table]:
    """Every object under ``base`` as FOUND_SCHEMA tables, sub-prefixes listed concurrently.

    The result is the same set of objects as one recursive listing of ``base`` (in another
    order); listings bypass s3fs's directory cache, which would otherwise keep an info dict per
    object alive in the driver for as long as the filesystem object lives.
    """
    return iter(sync(fs.loop, _list_tree, fs, base.rstrip("/"), concurrency))


async def _list_tree(fs: Any, base: str, concurrency: int) -> list[pa.Table]:
    gate = asyncio.Semaphore(concurrency)
    tables, frontier = [], [base]
    for _ in range(EXPAND_LEVELS):
        levels = await asyncio.gather(*(_gated(gate, _listing(fs, p, "/")) for p in frontier))
        tables += [table for found, _ in levels for table in found]
        frontier = [prefix for _, prefixes in levels for prefix in prefixes]
        if len(frontier) >= concurrency or not frontier:
            break
    subtrees = await asyncio.gather(*(_gated(gate, _listing(fs, p, "")) for p in frontier))
    return tables + [table for found, _ in subtrees for table in found]


async def _gated(gate: asyncio.Semaphore, job: Any) -> Any:
    async with gate:
        return await job


async def _listing(fs: Any, path: str, delimiter: str) -> tuple[list[pa.Table], list[str]]:
    """The objects under ``path`` (all of them, or with delimiter "/" the ones directly under it)
    converted every _ROWS_PER_BATCH, and its sub-prefixes (only with a delimiter)."""
    tables, batch, prefixes = [], [], []
    async for entry in _entries(fs, path, delimiter):
        if entry.get("type") == "directory":
            prefixes.append(entry["name"])
            continue
        batch.append(entry)
        if len(batch) >= _ROWS_PER_BATCH:
            tables.append(found_table(batch))
            batch = []
    tables.append(found_table(batch))
    return tables, prefixes


def _entries(fs: Any, path: str, delimiter: str) -> AsyncIterator[dict[str, Any]]:
    bucket, key, _ = fs.split_path(path)
    prefix = key.rstrip("/") + "/" if key else ""
    return fs._iterdir(bucket, delimiter=delimiter, prefix=prefix)
