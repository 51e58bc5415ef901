"""Committing a run as the dataset's next version.

Steps, each one safe to die after (the reliability tests kill the driver at every one):

1. ``parts``: the last staged rows are written.
2. ``version-files``: the version's index (the base version's unchanged rows plus this run's
   rows), quarantine table and run record are written under ``versions/<N>-<run_id>/``: a
   folder no reader follows until step 3, and no other run writes.
3. ``record``: ``versions/<N>.json`` is created create-only. This is the commit: of two runs
   racing for N exactly one gets here; the other fails with VersionConflict.
4. ``pointer``: ``_COMMITTED`` names version N; then the single-path copies are refreshed.
5. Clean-up: staging, versions beyond ``output.keep_versions``, outputs no kept version points
   to, and abandoned multipart uploads. Only files older than the record are removed, so a
   run that started after this commit never loses a file it just wrote. A failure here is a
   warning: the dataset is committed; the next run cleans up again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import layout, versions
from pipelines.faults import strike
from pipelines.incremental import Delta
from pipelines.schema import INDEX_SCHEMA, QUARANTINE_SCHEMA
from pipelines.sink import DatasetSink
from pipelines.storage import publish_bytes
from pipelines.sweep import clean_up

_log = logging.getLogger("synthfill")


def commit_version(
    sink: DatasetSink,
    record: dict[str, Any],
    base: versions.Version | None,
    delta: Delta,
    *,
    carry_over: bool,
    touched: pa.Array | None = None,
) -> versions.Version:
    """Publish the run as version base+1 and return it. ``carry_over`` keeps the base's rows
    for unchanged sources (False when the recipe changed or a rebuild was asked for);
    ``touched`` (the image_ids processed) lets the sweep list only where leftovers can be."""
    fs, root = sink.fs, sink.root
    sink.flush()
    strike("commit:parts")
    number = (base.version if base else 0) + 1
    if versions.read_record(fs, root, number) is not None:  # lost the race already: say so now
        raise versions.conflict(fs, root, number)
    folder = f"{versions.version_dir(number)}-{sink.run_id}"
    carried = base if carry_over else None
    counts = _write_tables(sink, folder, carried, delta)
    record["version"] = number
    publish_bytes(fs, layout.join(root, f"{folder}/{layout.RUN_RECORD}"), _json(record))
    strike("commit:version-files")
    version = versions.Version(
        version=number,
        run_id=sink.run_id,
        manifest_sha256=record["manifest_sha256"],
        index=f"{folder}/{layout.INDEX}",
        quarantine=f"{folder}/{layout.QUARANTINE}",
        run_record=f"{folder}/{layout.RUN_RECORD}",
        committed_at=datetime.now(UTC).isoformat(),
        parent=base.version if base else None,
        new_generation=base is not None and not carry_over,
        **counts,
    )
    versions.commit_record(fs, root, version)
    strike("commit:record")
    versions.publish_latest(fs, root, version)
    strike("commit:copies")
    clean_up(sink, version, touched)
    return version


def _write_tables(
    sink: DatasetSink, folder: str, base: versions.Version | None, delta: Delta
) -> dict[str, int]:
    fs, root = sink.fs, sink.root
    ok_ids: list[pa.Array] = []
    bad_ids: list[pa.Array] = []
    rows = 0
    with (
        parquet_writer(fs, layout.join(root, f"{folder}/{layout.INDEX}"), INDEX_SCHEMA) as index,
        parquet_writer(
            fs, layout.join(root, f"{folder}/{layout.QUARANTINE}"), QUARANTINE_SCHEMA
        ) as bad,
    ):
        if base is not None:
            for table in _kept(sink, base.index, delta.keep_ok):
                index.write_table(table.cast(INDEX_SCHEMA))
                ok_ids.append(table["image_id"].combine_chunks())
                rows += table.num_rows
            for table in _kept(sink, base.quarantine, delta.keep_quarantined):
                bad.write_table(table.cast(QUARANTINE_SCHEMA))
                bad_ids.append(table["image_id"].combine_chunks())
        for good, quarantined in sink.part_tables():
            if good.num_rows:
                index.write_table(good)
                ok_ids.append(good["image_id"].combine_chunks())
                rows += good.num_rows
            if quarantined.num_rows:
                bad.write_table(quarantined)
                bad_ids.append(quarantined["image_id"].combine_chunks())
    return {
        "rows": rows,
        "items_ok": _distinct(ok_ids),
        "items_quarantined": _distinct(bad_ids),
    }


def _kept(sink: DatasetSink, key: str, ids: pa.Array) -> Iterator[pa.Table]:
    """The base version's rows for ``ids``, a row group at a time."""
    if not len(ids):
        return
    path = layout.join(sink.root, key)
    # row group by row group, in this thread (see versions.read_parquet)
    with sink.fs.open(path, "rb") as handle, pq.ParquetFile(handle) as parquet:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group)
            table = table.filter(pc.is_in(table["image_id"], value_set=ids))
            if table.num_rows:
                yield table


@contextmanager
def parquet_writer(fs: Any, path: str, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A zstd Parquet writer streaming to ``path`` (not atomic: for files no reader follows)."""
    # Streamed: an index of 100 M rows never sits in memory. A failure may leave a cut file
    # here, but no record names this folder yet and a retry of this run rewrites it.
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle, pq.ParquetWriter(handle, schema, compression="zstd") as w:
        yield w


def _distinct(chunks: list[pa.Array]) -> int:
    return len(pc.unique(pa.chunked_array(chunks, pa.string()))) if chunks else 0


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()
