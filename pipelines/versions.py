"""Committed dataset versions: what a reader trusts, and how a version becomes committed.

A dataset folder holds numbered versions. Version N's files live under ``versions/000N/`` and
never change once written. N is committed when ``versions/000N.json`` (its commit record) is
created, create-only: of two runs committing the same N, exactly one succeeds. ``_COMMITTED``
then points at the latest version (written after the record), and ``index.parquet``,
``quarantine.parquet`` and ``run.json`` beside it are copies of that version's files for
readers that take a single path. A crash between those steps leaves the pointer one version
behind (readers see the previous version); the next run rolls it forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import layout
from pipelines.faults import strike
from pipelines.storage import create_bytes, is_local, publish_bytes

VERSIONS = "versions"
CARD = "README.md"  # the latest version's dataset card, for Hugging Face datasets
# Columns that say when and by which run a row was made, not what it is: left out of digests.
VOLATILE = ("run_id", "elapsed_ms")
# Rows sort by these before a digest (Ray returns rows in any order).
ROW_KEY = ("image_id", "variant", "inpainter")


class VersionConflict(RuntimeError):
    """Another run committed this version number first."""


@dataclass(frozen=True)
class Version:
    """One committed version: its number, the run that made it and the files it consists of."""

    version: int
    run_id: str
    manifest_sha256: str
    index: str  # keys relative to the dataset root
    quarantine: str
    run_record: str
    rows: int
    items_ok: int
    items_quarantined: int
    committed_at: str
    parent: int | None = None
    new_generation: bool = False  # the recipe changed: no rows carried from the parent

    @property
    def folder(self) -> str:
        """``versions/<N>-<run_id>``: the folder of this version's files (relative key)."""
        return self.index.rsplit("/", 1)[0]

    card: str | None = None  # the Hugging Face dataset card (README.md) of this version

    def as_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Version:
        doc = json.loads(data)
        if "version" not in doc:  # a dataset written before versions existed
            doc = _unversioned(doc)
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def _unversioned(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": 0,
        "run_id": doc["run_id"],
        "manifest_sha256": doc["manifest_sha256"],
        "index": doc.get("index", layout.INDEX),
        "quarantine": doc.get("quarantine", layout.QUARANTINE),
        "run_record": doc.get("run_record", layout.RUN_RECORD),
        "rows": doc.get("rows", 0),
        "items_ok": 0,
        "items_quarantined": 0,
        "committed_at": "",
    }


def version_dir(number: int) -> str:
    """Folder of version ``number``'s files, relative to the dataset root."""
    return f"{VERSIONS}/{number:06d}"


def record_key(number: int) -> str:
    """Key of version ``number``'s commit record, relative to the dataset root."""
    return f"{VERSIONS}/{number:06d}.json"


def read_pointer(fs: fsspec.AbstractFileSystem, root: str) -> Version | None:
    """The version ``_COMMITTED`` names, or None when the folder holds no committed dataset."""
    try:
        return Version.from_json(fs.cat_file(layout.join(root, layout.COMMIT_MARKER)))
    except FileNotFoundError:
        return None


def read_record(fs: fsspec.AbstractFileSystem, root: str, number: int) -> Version | None:
    try:
        return Version.from_json(fs.cat_file(layout.join(root, record_key(number))))
    except FileNotFoundError:
        return None


def latest(fs: fsspec.AbstractFileSystem, root: str) -> tuple[Version | None, bool]:
    """The newest committed version and whether ``_COMMITTED`` lags behind it.

    The pointer is written after the record, so a crash in between leaves records newer than
    the pointer: they are found by asking for the next numbers (one request each).
    """
    current = read_pointer(fs, root)
    behind = False
    number = current.version if current else 0
    while (newer := read_record(fs, root, number + 1)) is not None:
        current, behind, number = newer, True, number + 1
    return current, behind


def all_versions(fs: fsspec.AbstractFileSystem, root: str) -> list[Version]:
    """Every commit record still kept, oldest first."""
    folder = layout.join(root, VERSIONS)
    if not fs.exists(folder):
        return []
    names = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".json"))
    return [Version.from_json(fs.cat_file(p)) for p in names]


def commit_record(fs: fsspec.AbstractFileSystem, root: str, version: Version) -> None:
    """Create the version's record (the commit point); VersionConflict if it exists already."""
    try:
        create_bytes(fs, layout.join(root, record_key(version.version)), version.as_json())
    except FileExistsError:
        raise conflict(fs, root, version.version) from None


def conflict(fs: fsspec.AbstractFileSystem, root: str, number: int) -> VersionConflict:
    """The error for a run that lost the race for version ``number``."""
    winner = read_record(fs, root, number)
    return VersionConflict(
        f"another run ({winner.run_id if winner else 'unknown'}) committed version {number} "
        "while this run was working; nothing of this run is committed. Run again: it picks "
        "up only what that version does not have."
    )


def publish_latest(fs: fsspec.AbstractFileSystem, root: str, version: Version) -> None:
    """Point ``_COMMITTED`` at ``version``, then refresh the single-path copies beside it."""
    publish_bytes(fs, layout.join(root, layout.COMMIT_MARKER), version.as_json())
    strike("commit:pointer")
    copies = (
        (version.index, layout.INDEX),
        (version.quarantine, layout.QUARANTINE),
        (version.run_record, layout.RUN_RECORD),
    )
    if version.card is not None:  # load_dataset(<folder>) reads the card at the root
        copies += ((version.card, CARD),)
    for source, name in copies:
        if source != name:
            replace_with_copy(fs, layout.join(root, source), layout.join(root, name))


def replace_with_copy(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """Make ``target`` a copy of ``source`` in one step: a reader sees the old or the new file.

    Object stores copy server-side in one request (CopyObject is atomic); a local copy is
    written beside the target and renamed over it.
    """
    if not is_local(fs):
        fs.copy(source, target)
        return
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")  # as storage.publish_bytes
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def latest_copies_current(fs: fsspec.AbstractFileSystem, root: str, version: Version) -> bool:
    """True when the top-level run.json is the pointer's (its copies were all refreshed)."""
    try:
        record = json.loads(fs.cat_file(layout.join(root, layout.RUN_RECORD)))
    except FileNotFoundError:
        return False
    return record.get("run_id") == version.run_id and record.get("version") == version.version


def read_table(
    fs: fsspec.AbstractFileSystem, root: str, key: str, columns: list[str] | None = None
) -> pa.Table:
    """One Parquet file of the dataset (``key`` relative to ``root``)."""
    return read_parquet(fs, layout.join(root, key), columns)


def read_parquet(
    fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None
) -> pa.Table:
    """Read a Parquet file through fsspec in this thread (see :func:`parquet_file`)."""
    with fs.open(path, "rb") as handle, parquet_file(handle) as parquet:
        return parquet.read(columns=columns, use_threads=False)


def parquet_file(handle: Any) -> pq.ParquetFile:
    """A Parquet reader over a Python file object that reads only in the calling thread.

    Every Parquet read of an fsspec file goes through here. Arrow's defaults (``pre_buffer``
    since pyarrow 26, and ``pq.read_table``) read ahead on Arrow's IO pool; a pool thread can
    then drop the last reference to a buffer of the Python file object while the interpreter
    exits, and the process aborts (exit code -6 after a successful run). Reads here are
    sequential per row group anyway, so nothing is lost.
    """
    return pq.ParquetFile(handle, pre_buffer=False)


def index_digest(table: pa.Table, root_uri: str | None = None) -> str:
    """sha256 of what an index says, independent of row order, run ids and timings.

    Two builds of the same sources with the same recipe have the same digest whatever the
    worker count, batching or interruptions: the figure the reliability tests compare. With
    ``root_uri`` (the dataset's URI) output keys count relative to it, so copies compare equal.
    """
    names = [n for n in table.column_names if n not in VOLATILE]
    if root_uri is not None:
        for name in ("output_uri", "mask_uri"):
            if name in names:
                column = pc.replace_substring(table[name], root_uri.rstrip("/") + "/", "")
                table = table.set_column(table.schema.get_field_index(name), name, column)
    keys = [(k, "ascending") for k in ROW_KEY if k in names]
    table = table.select(names)
    table = table.take(pc.sort_indices(table, sort_keys=keys)) if keys else table
    digest = hashlib.sha256()
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()
