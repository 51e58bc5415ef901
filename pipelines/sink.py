"""The dataset sink: index and quarantine stream to staging; a commit publishes them.

Readers trust only committed data: ``_COMMITTED`` is written last and names the files of the
committed run. Images and masks are written by the workers under content-stable keys, so a
retried task rewrites identical bytes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import layout
from pipelines.credentials import access_hint
from pipelines.errors import RunError
from pipelines.manifest import OutputSpec
from pipelines.schema import INDEX_SCHEMA, QUARANTINE_SCHEMA, split_work
from pipelines.sources import filesystem
from pipelines.storage import abort_multipart_uploads, publish_bytes

ROW_GROUP_ROWS = 16_384  # index rows buffered per Parquet row group (a few MB)

# "images/3f" and "masks/3f/": the start of every key in one shard folder (layout.shard)
_SHARD_HEAD = 9
# Left behind by an uncommitted run: safe to write over without --overwrite.
_RESIDUE = {layout.STAGING, layout.IMAGES, layout.MASKS}
_OURS = {layout.COMMIT_MARKER, layout.RUN_RECORD, layout.INDEX, layout.QUARANTINE} | _RESIDUE
_log = logging.getLogger("synthfill")


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
        self.aborted_uploads: list[str] = []  # a crashed run's multipart uploads, at commit
        # An output that held nothing can only gain stale files from this run's failed writes.
        self.started_empty = False

    def check_target(self) -> None:
        """Refuse a non-empty output unless it is ours and overwrite was asked (before compute)."""
        try:
            entries = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
            if not entries:
                self.started_empty = True
                return
        except Exception as exc:  # unreachable or refusing store: fatal before compute, named
            raise RunError(
                f"cannot read output.uri {self.output.uri!r}: {type(exc).__name__}: {exc}"
                + access_hint(exc)
            ) from exc
        names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries}
        # Ours but never committed (a failed or interrupted commit): safe to write over.
        if names <= _RESIDUE or (names <= _OURS and layout.COMMIT_MARKER not in names):
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
        outputs, a failed run's leftovers) are removed before the new marker appears. A storage
        failure before the marker is written raises RunError: nothing is committed.
        """
        try:
            marker_path = self._publish(record)
        except Exception as exc:  # the store failed (retries exhausted) or the process is broken
            raise RunError(
                f"commit to {self.output.uri!r} failed and the new dataset is not committed "
                f"({type(exc).__name__}: {exc}); run again once the storage is healthy"
            ) from exc
        self._clean_up()
        return self.fs.unstrip_protocol(marker_path)

    def _publish(self, record: dict[str, Any]) -> str:
        self._close()
        marker_path = layout.join(self.root, layout.COMMIT_MARKER)
        if self.fs.exists(marker_path):
            self.fs.rm(marker_path)
        for name in (layout.INDEX, layout.QUARANTINE):
            self.fs.mv(layout.join(self.staging, name), layout.join(self.root, name))
        self._put(layout.RUN_RECORD, record)
        # Listing every output costs a request per 1,000 files: skipped when nothing can be stale.
        # (a quarantined item may have written files before it failed, or in an earlier attempt)
        if not self.started_empty or self.rows_quarantined:
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
        return marker_path

    def _clean_up(self) -> None:
        """Remove staging and a crashed run's pending uploads; the dataset is committed already."""
        staging = layout.join(self.root, layout.STAGING)
        try:
            if self.fs.exists(staging):  # in an object store, emptied folders are gone already
                self.fs.rm(staging, recursive=True)
            # Nothing of this run is in flight now, so every pending upload under our folders
            # was left by a killed process: invisible, but stored and billed until aborted.
            self.aborted_uploads = abort_multipart_uploads(
                self.fs, self.root, lambda key: key.split("/", 1)[0] in _OURS
            )
        except Exception as exc:  # e.g. no s3:ListBucketMultipartUploads permission
            _log.warning(
                "%s is committed, but cleaning up after it failed (%s: %s); the next run "
                "cleans up again",
                self.output.uri,
                type(exc).__name__,
                exc,
            )

    def _remove_unreferenced(self) -> None:
        """Delete files under images/ and masks/ that no committed row points to.

        Outputs are listed one shard folder (1/256 of them) at a time and compared with that
        shard's slice of the referenced keys, which stay one sorted Arrow array: memory and
        time grow linearly with the dataset (a Python set of every key took ~6x the memory).
        """
        keep, spans = self._referenced_by_shard()
        for folder in (layout.IMAGES, layout.MASKS):
            path = layout.join(self.root, folder)
            for shard in self.fs.ls(path, detail=False) if self.fs.exists(path) else []:
                head = (shard[len(self.root) + 1 :] + "/")[:_SHARD_HEAD]
                first, last = spans.get(head, (0, 0))
                found = self.fs.find(shard)
                listed = pa.array([p[len(self.root) + 1 :] for p in found], pa.large_string())
                known = pc.is_in(listed, value_set=keep.slice(first, last - first))
                stale = [found[i] for i in pc.indices_nonzero(pc.invert(known)).to_pylist()]
                if stale:
                    self.fs.rm(stale)

    def _referenced_by_shard(self) -> tuple[pa.Array, dict[str, tuple[int, int]]]:
        """Every key the index points to, sorted, and where each shard's keys start and end."""
        with self.fs.open(layout.join(self.root, layout.INDEX), "rb") as handle:
            table = pq.read_table(handle, columns=["output_uri", "mask_uri"])
        prefix = len(self.fs.unstrip_protocol(self.root).rstrip("/")) + 1
        # large_string: two keys per row pass 2 GiB of text (int32 offsets) near 24 M rows
        keys = [pc.utf8_slice_codeunits(col.cast(pa.large_string()), prefix) for col in table]
        keep = pa.chunked_array([c for col in keys for c in col.chunks], pa.large_string())
        keep = keep.combine_chunks()
        keep = keep.take(pc.array_sort_indices(keep))
        runs = pc.run_end_encode(pc.utf8_slice_codeunits(keep, 0, _SHARD_HEAD))
        spans, first = {}, 0
        for head, last in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
            spans[head], first = (first, last), last
        return keep, spans

    def abort(self, record: dict[str, Any]) -> str:
        """Keep what was staged for inspection, with the failed run's record; commit nothing."""
        path = layout.join(self.staging, layout.RUN_RECORD)
        try:
            self._close()
            publish_bytes(self.fs, path, json.dumps(record, indent=2).encode())
        except Exception as exc:  # the store that failed the run may refuse this too
            why = record.get("summary", {}).get("message") or "unknown reason"
            raise RunError(
                f"run {record['run_id']} failed and nothing is committed ({why}); its record "
                f"could not be kept at {self.fs.unstrip_protocol(path)} either "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return self.fs.unstrip_protocol(path)

    def _put(self, name: str, doc: dict[str, Any]) -> None:
        publish_bytes(self.fs, layout.join(self.root, name), json.dumps(doc, indent=2).encode())
