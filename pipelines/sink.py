"""The dataset sink: index and quarantine stream to staging; a commit publishes them.

Readers trust only committed data: ``_COMMITTED`` is written last and names the files of the
committed run. Images and masks are written by the workers under content-stable keys, so a
retried task rewrites identical bytes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import layout
from pipelines.errors import RunError
from pipelines.manifest import OutputSpec
from pipelines.schema import INDEX_SCHEMA, QUARANTINE_SCHEMA, split_work
from pipelines.sources import filesystem
from pipelines.storage import publish_bytes

ROW_GROUP_ROWS = 16_384  # index rows buffered per Parquet row group (a few MB)

# Left behind by an uncommitted run: safe to write over without --overwrite.
_RESIDUE = {layout.STAGING, layout.IMAGES, layout.MASKS}
_OURS = {layout.COMMIT_MARKER, layout.RUN_RECORD, layout.INDEX, layout.QUARANTINE} | _RESIDUE


class DatasetSink:
    """Writes one run's dataset under ``output.uri``."""

    def __init__(self, output: OutputSpec, run_id: str) -> None:
        self.output = output
        self.fs, root = filesystem(output.uri, output.storage_options)
        self.root = root.rstrip("/")
        self.staging = layout.join(self.root, f"{layout.STAGING}/{run_id}")
        self.rows_ok = 0
        self.rows_quarantined = 0
        self.reasons: dict[str, int] = {}
        self.index_write_s = 0.0  # time spent encoding and writing Parquet (target G10)
        self._writers: list[tuple[Any, pq.ParquetWriter]] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def check_target(self) -> None:
        """Refuse a non-empty output unless it is ours and overwrite was asked (before compute)."""
        if not self.fs.exists(self.root):
            return
        names = {
            entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.root, detail=False)
        }
        if names <= _RESIDUE:
            return
        if not names <= _OURS:
            strangers = sorted(names - _OURS)[:3]
            raise RunError(
                f"output.uri {self.output.uri!r} holds files that synthfill did not write "
                f"({', '.join(strangers)}); choose an empty folder"
            )
        if not self.output.overwrite:
            raise RunError(
                f"output.uri {self.output.uri!r} already holds a dataset; pass --overwrite "
                "(or set output.overwrite: true) to replace it, or choose another folder"
            )

    def open(self) -> None:
        """Open the staged index and quarantine writers; a replaced dataset stays until commit."""
        self.fs.makedirs(self.staging, exist_ok=True)
        self._index = self._writer(layout.INDEX, INDEX_SCHEMA)
        self._quarantine = self._writer(layout.QUARANTINE, QUARANTINE_SCHEMA)

    def _writer(self, name: str, schema: pa.Schema) -> pq.ParquetWriter:
        handle = self.fs.open(layout.join(self.staging, name), "wb")
        writer = pq.ParquetWriter(handle, schema, compression="zstd")
        self._writers.append((handle, writer))
        return writer

    def add(self, work: pa.Table) -> None:
        """Append one batch of work rows (ok rows to the index, the rest to quarantine)."""
        start = time.perf_counter()
        index, quarantine = split_work(work)
        if index.num_rows:
            self._buffer.append(index)
            self._buffered += index.num_rows
            if self._buffered >= ROW_GROUP_ROWS:
                self._flush()
        if quarantine.num_rows:
            self._quarantine.write_table(quarantine)
            for reason in quarantine["reason"].to_pylist():
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.rows_ok += index.num_rows
        self.rows_quarantined += quarantine.num_rows
        self.index_write_s += time.perf_counter() - start

    def flush(self) -> None:
        """Write the buffered index rows now (timed like every other index write)."""
        start = time.perf_counter()
        self._flush()
        self.index_write_s += time.perf_counter() - start

    def _flush(self) -> None:
        # One row group per flush: few large groups read faster than one per batch.
        if self._buffer:
            self._index.write_table(pa.concat_tables(self._buffer))
        self._buffer, self._buffered = [], 0

    def _close(self) -> None:
        if self._writers:
            self._flush()
        for handle, writer in self._writers:
            writer.close()
            handle.close()
        self._writers = []

    def commit(self, record: dict[str, Any]) -> str:
        """Publish index, quarantine and run record; write the marker last. Returns its URI.

        A replaced dataset loses its marker first, so a reader sees the old dataset, then none,
        then the new one, never a mix. Files no committed row points to (a replaced dataset's
        outputs, a failed run's leftovers) are removed before the new marker appears.
        """
        self._close()
        marker_path = layout.join(self.root, layout.COMMIT_MARKER)
        if self.fs.exists(marker_path):
            self.fs.rm(marker_path)
        for name in (layout.INDEX, layout.QUARANTINE):
            self.fs.mv(layout.join(self.staging, name), layout.join(self.root, name))
        self._put(layout.RUN_RECORD, record)
        self._remove_unreferenced()
        marker = {
            "run_id": record["run_id"],
            "index": layout.INDEX,
            "quarantine": layout.QUARANTINE,
            "run_record": layout.RUN_RECORD,
            "rows": self.rows_ok,
            "manifest_sha256": record["manifest_sha256"],
        }
        self._put(layout.COMMIT_MARKER, marker)
        self.fs.rm(layout.join(self.root, layout.STAGING), recursive=True)
        return self.fs.unstrip_protocol(layout.join(self.root, layout.COMMIT_MARKER))

    def _remove_unreferenced(self) -> None:
        with self.fs.open(layout.join(self.root, layout.INDEX), "rb") as handle:
            table = pq.read_table(handle, columns=["output_uri", "mask_uri"])
        keep = {self.fs._strip_protocol(u) for col in table.columns for u in col.to_pylist()}
        for folder in (layout.IMAGES, layout.MASKS):
            path = layout.join(self.root, folder)
            found = self.fs.find(path) if self.fs.exists(path) else []
            stale = [p for p in found if p not in keep]
            if stale:
                self.fs.rm(stale)

    def abort(self, record: dict[str, Any]) -> str:
        """Keep what was staged for inspection, with the failed run's record; commit nothing."""
        self._close()
        path = layout.join(self.staging, layout.RUN_RECORD)
        publish_bytes(self.fs, path, json.dumps(record, indent=2).encode())
        return self.fs.unstrip_protocol(path)

    def _put(self, name: str, doc: dict[str, Any]) -> None:
        publish_bytes(self.fs, layout.join(self.root, name), json.dumps(doc, indent=2).encode())
