"""The committed version as a dataset Hugging Face ``datasets`` (and Croissant readers) load.

Per split, shards ``versions/<N>-<run_id>/data/{split}-{k:05d}-of-{n:05d}.parquet`` hold the
rows with ``image`` and ``mask`` as Image structs ``{bytes, path}``, the ``SHARD_COLUMNS`` of
the index and the ``huggingface`` schema metadata, so ``datasets`` decodes them as images.
With ``output.embed_images`` the bytes are in the shards (self-contained, a second copy of every
image; row groups of ~100 MB, shards of ~500 MB); without, ``path`` names the output (small
shards, the images stay where they are). A dataset card (``README.md`` with the Hub's YAML
header: configs and data_files per split, features, split sizes) is written with each version
and copied to the dataset root, where ``load_dataset(<dataset folder>)`` looks. Splits are the
index's ``split`` column, drawn from a group key, so variants of one source never straddle
splits.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import layout, versions
from pipelines.dataset_card import render
from pipelines.hf_features import IMAGE, SHARD_COLUMNS, shard_schema
from pipelines.integrity import HashingWriter
from pipelines.storage import is_local

ROW_GROUP_BYTES = 100 * 1024**2  # within the Hub's advice of 64-128 MB per row group
SHARD_BYTES = 500 * 1024**2
# Without the bytes a row is ~0.5 kB: these give shards of ~500 MB and row groups of ~30 MB.
PATH_ONLY_ROWS_PER_SHARD = 1_000_000
PATH_ONLY_ROWS_PER_GROUP = 65_536


def write_split_shards(
    fs: fsspec.AbstractFileSystem,
    root: str,
    folder: str,
    index_key: str,
    written_root: str,
    embed: bool,
    *,
    digests: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Write the version's shards under ``<folder>/data/``; return split -> shard keys
    (relative to ``root``) and split -> rows.

    ``written_root`` is the URI the index's ``output_uri``/``mask_uri`` start with (the
    dataset's location when the rows were written: ``record["integrity"]["root"]``); the files
    are looked for under ``root``. ``digests``, when given, is filled with shard key ->
    ``{"sha256", "bytes"}`` (hashed as written: for Croissant and integrity records). Streams:
    the index is read a row group at a time and at most one row group of image bytes is held.
    """
    index_path = layout.join(root, index_key)
    counts = _split_counts(fs, index_path)
    locate = _Locator(fs, root, written_root, embed)
    per_group, per_shard = _rows_per_group_and_shard(fs, index_path, locate)
    keys = {
        split: [f"{folder}/data/{split}-{k:05d}-of-{n:05d}.parquet" for k in range(n)]
        for split, n in ((s, math.ceil(rows / per_shard)) for s, rows in counts.items())
    }
    found = {} if digests is None else digests
    writers = {
        s: _SplitWriter(fs, root, keys[s], per_shard, per_group, locate, found) for s in keys
    }
    for table in _index_groups(fs, index_path, ["split", "output_uri", "mask_uri"]):
        for split, writer in writers.items():
            writer.add(table.filter(pc.equal(table["split"], split)))
    for writer in writers.values():  # not in a finally: a failed run must not close a shard
        writer.close()
    return keys, dict(counts)


def _rows_per_group_and_shard(
    fs: fsspec.AbstractFileSystem, index_path: str, locate: _Locator
) -> tuple[int, int]:
    """Rows per row group (~ROW_GROUP_BYTES) and per shard (~SHARD_BYTES, whole row groups,
    so that no shard ends in a small one), from the average bytes of a row's files."""
    if not locate.embed:
        return PATH_ONLY_ROWS_PER_GROUP, PATH_ONLY_ROWS_PER_SHARD
    per_row = _bytes_per_row(fs, index_path, locate)
    per_group = max(1, ROW_GROUP_BYTES // per_row)
    return per_group, max(1, SHARD_BYTES // per_row // per_group) * per_group


def _index_groups(fs: fsspec.AbstractFileSystem, path: str, extra: list[str]) -> Iterator[pa.Table]:
    # A row group at a time, in this thread (see versions.read_parquet).
    columns = list(dict.fromkeys([*extra, *SHARD_COLUMNS]))
    with fs.open(path, "rb") as handle, versions.parquet_file(handle) as parquet:
        for group in range(parquet.num_row_groups):
            yield parquet.read_row_group(group, columns=columns, use_threads=False)


def _split_counts(fs: fsspec.AbstractFileSystem, path: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    with fs.open(path, "rb") as handle, versions.parquet_file(handle) as parquet:
        for group in range(parquet.num_row_groups):
            split = parquet.read_row_group(group, columns=["split"], use_threads=False)["split"]
            counts.update(split.to_pylist())
    counts.pop(None, None)  # every row synthfill writes has a split; a hand-made one may not
    return counts


def _bytes_per_row(fs: fsspec.AbstractFileSystem, path: str, locate: _Locator) -> int:
    """Output plus mask bytes of a row, averaged over the first rows' files (sizes only)."""
    with fs.open(path, "rb") as handle, versions.parquet_file(handle) as parquet:
        if not parquet.metadata.num_rows:
            return 1
        first = parquet.read_row_group(0, columns=["output_uri", "mask_uri"], use_threads=False)
    sample = first.slice(0, 32).to_pylist()
    sizes = [
        fs.size(locate.key(r["output_uri"])) + fs.size(locate.key(r["mask_uri"])) for r in sample
    ]
    return max(1, sum(sizes) // len(sizes))


class _Locator:
    """Where a row's files are now, and their bytes when embedding."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, written: str, embed: bool) -> None:
        self.fs, self.root, self.embed = fs, root, embed
        self.prefix = written.rstrip("/") + "/"

    def key(self, uri: str) -> str:
        """The file's path in ``fs`` (rows name it under the root it was written to)."""
        if uri.startswith(self.prefix):
            return layout.join(self.root, uri[len(self.prefix) :])
        return self.fs._strip_protocol(uri)

    def images(self, uris: list[str]) -> pa.Array:
        keys = [self.key(u) for u in uris]
        if not self.embed:  # local paths stay plain: datasets opens those with open()
            paths = keys if is_local(self.fs) else [self.fs.unstrip_protocol(k) for k in keys]
            return pa.array([{"bytes": None, "path": p} for p in paths], IMAGE)
        found = self.fs.cat(keys)  # one call: object stores fetch these concurrently
        # As datasets embeds: the bytes, and the file's name (for its extension) as the path.
        rows = [{"bytes": found[k], "path": k.rsplit("/", 1)[-1]} for k in keys]
        return pa.array(rows, IMAGE)


class _SplitWriter:
    """Rows of one split into its shards, in row groups of ``per_group`` rows.

    Index rows (small) are buffered until a row group is full; only then are its images read,
    so at most one row group of image bytes is in memory.
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        keys: list[str],
        per_shard: int,
        per_group: int,
        locate: _Locator,
        digests: dict[str, dict[str, Any]],
    ) -> None:
        self.fs, self.root, self.keys, self.locate, self.digests = fs, root, keys, locate, digests
        self.per_shard, self.per_group = per_shard, per_group
        self.pending: list[pa.Table] = []
        self.buffered = 0
        self.shard, self.in_shard = -1, per_shard  # the first row group opens shard 0
        self.writer: pq.ParquetWriter | None = None
        self.handle: HashingWriter | None = None

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.buffered += table.num_rows
        while self.buffered >= self._room():
            self._write(self._room())

    def _room(self) -> int:
        """Rows of the next row group: a full one, or what the current shard has left."""
        left = self.per_shard - self.in_shard
        return min(self.per_group, left if left > 0 else self.per_shard)

    def _write(self, rows: int) -> None:
        buffered = pa.concat_tables(self.pending)
        group, rest = buffered.slice(0, rows), buffered.slice(rows)
        self.pending, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        if self.in_shard >= self.per_shard:
            self._next_shard()
        self.writer.write_table(_shard_rows(group, self.locate), row_group_size=rows)
        self.in_shard += rows

    def _next_shard(self) -> None:
        self._close_shard()
        self.shard += 1
        path = layout.join(self.root, self.keys[self.shard])
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        # Not atomic, as the index beside it: no reader follows this folder before the commit.
        self.handle = HashingWriter(self.fs.open(path, "wb"))
        self.writer = _parquet_writer(self.handle)
        self.in_shard = 0

    def close(self) -> None:
        if self.buffered:
            self._write(self.buffered)
        self._close_shard()

    def _close_shard(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        self.handle.close()
        key = self.keys[self.shard]
        self.digests[key] = {"sha256": self.handle.sha256.hexdigest(), "bytes": self.handle.size}
        self.writer = self.handle = None


def _parquet_writer(handle: HashingWriter) -> pq.ParquetWriter:
    # Image bytes are stored as they are: JPEG/PNG/WebP do not compress further, and neither
    # dictionaries nor min/max statistics of whole images help a reader (they cost memory).
    compression = {"image.bytes": "none", "mask.bytes": "none"}
    compression |= {c: "zstd" for c in ("image.path", "mask.path", *SHARD_COLUMNS)}
    keep = list(SHARD_COLUMNS)
    return pq.ParquetWriter(
        handle, shard_schema(), compression=compression, use_dictionary=keep, write_statistics=keep
    )


def _shard_rows(table: pa.Table, locate: _Locator) -> pa.Table:
    images = locate.images(table["output_uri"].to_pylist())
    masks = locate.images(table["mask_uri"].to_pylist())
    columns = [images, masks, *(table[name] for name in SHARD_COLUMNS)]
    return pa.Table.from_arrays(columns, schema=shard_schema())  # the index's types: no copy


def dataset_card(
    record: dict[str, Any],
    shards: dict[str, list[str]],
    counts: dict[str, int],
    sizes: dict[str, int],
    *,
    license: str = "unknown",
    croissant: str | None = None,
) -> bytes:
    """README.md for the version (see dataset_card.render): the Hub's YAML header, then what
    the dataset is, how it was made and how to load it.

    ``record`` is the version's run record (with ``version`` and ``integrity``); ``shards`` and
    ``counts`` are what ``write_split_shards`` returned; ``sizes`` split -> bytes of its shards.
    Paths in the header are relative to the dataset root: the copy there is what
    ``load_dataset(<dataset folder>)`` reads. ``license`` is a Hub licence id ("unknown":
    synthfill cannot know the sources' terms); ``croissant`` the key of the Croissant file.
    """
    return render(record, shards, counts, sizes, license=license, croissant=croissant)
