"""The dataset sink: rows stream into staged parts; a commit turns them into a new version.

Rows arrive from the workers in batches and are written as small Parquet *parts* under
``_staging/<run_id>/parts/`` (each one a single atomic write), so a run killed at any point
loses at most the rows of the part being filled: the next run with the same recipe and base
version adopts the staging, skips the items its parts hold and continues under the same run id.
Images and masks are written by the workers under content-stable keys, so redone work rewrites
identical bytes. ``pipelines.commit`` publishes; ``pipelines.versions`` says what is committed.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import layout, versions
from pipelines.credentials import access_hint
from pipelines.errors import RunError
from pipelines.exports import run_exports
from pipelines.manifest import OutputSpec
from pipelines.schema import WORK_SCHEMA, split_work
from pipelines.sources import filesystem
from pipelines.storage import publish_bytes

PART_ROWS = 16_384  # rows per staged part (a few MB; also the index's row-group size)
PART_SECONDS = 30.0  # ... or fewer, when they took this long: a crash loses at most this much
PLAN = "plan.json"
PARTS = "parts"

# Left behind by an uncommitted run: safe to write over.
_RESIDUE = {layout.STAGING, layout.IMAGES, layout.MASKS}
_OURS = {
    layout.COMMIT_MARKER,
    layout.RUN_RECORD,
    layout.INDEX,
    layout.QUARANTINE,
    versions.VERSIONS,
    layout.RECIPES,
    versions.CARD,
} | _RESIDUE
_log = logging.getLogger("synthfill")


class DatasetSink:
    """Writes one run's rows under ``output.uri`` and knows the dataset it adds to."""

    def __init__(self, output: OutputSpec, run_id: str, checkpoint_s: float = PART_SECONDS) -> None:
        self.output = output
        self.checkpoint_s = checkpoint_s
        self.fs, root = filesystem(output.uri, output.storage_options)
        self.root = root.rstrip("/")
        self.run_id = run_id
        self.rows_ok = 0
        self.rows_quarantined = 0
        self.reasons: dict[str, int] = {}
        self.index_write_s = 0.0  # time spent encoding and writing Parquet (target G10)
        self.parts: list[str] = []  # this run's parts, adopted ones first
        self.adopted_items = 0  # items an interrupted attempt of this run had finished
        self.aborted_uploads: list[str] = []  # a crashed run's multipart uploads, at commit
        # An output that held nothing can only gain stale files from this run's failed writes.
        self.started_empty = False
        self.repaired: versions.Version | None = None  # a version whose commit this run finished
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._since = time.monotonic()
        self._writer_tag = uuid.uuid4().hex[:8]  # part names of this process never collide

    @property
    def staging(self) -> str:
        return layout.join(self.root, f"{layout.STAGING}/{self.run_id}")

    def check_target(self, repair: bool = True) -> versions.Version | None:
        """The latest committed version (None for an empty folder or a run's leftovers).

        Refuses a folder holding files synthfill did not write. Before compute. With
        ``repair``, finishes the commit of a run that died after its commit record.
        """
        try:
            entries = self.fs.ls(self.root, detail=False) if self.fs.exists(self.root) else []
            if not entries:
                self.started_empty = True
                return None
            names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries}
            # a local write killed before its rename leaves ".<name>.<hex>.tmp" beside it
            names = {n for n in names if not (n.startswith(".") and n.endswith(".tmp"))}
            if not names <= _OURS:
                strangers = sorted(names - _OURS)[:3]
                raise RunError(
                    f"output.uri {self.output.uri!r} holds files that synthfill did not write "
                    f"({', '.join(strangers)}); choose an empty folder"
                )
            return self._latest(repair)
        except RunError:
            raise
        except Exception as exc:  # unreachable or refusing store: fatal before compute, named
            raise RunError(
                f"cannot read output.uri {self.output.uri!r}: {type(exc).__name__}: {exc}"
                + access_hint(exc)
            ) from exc

    def _latest(self, repair: bool) -> versions.Version | None:
        latest, behind = versions.latest(self.fs, self.root)
        if (
            repair
            and latest is not None
            and (behind or not versions.latest_copies_current(self.fs, self.root, latest))
        ):
            # A run died between its commit record and its pointer or copies: finish its job.
            _log.warning("%s: completing the commit of version %s", self.output.uri, latest.version)
            versions.publish_latest(self.fs, self.root, latest)
            self.repaired = latest
        return latest

    def resumable(self, manifest_sha256: str, base: int | None) -> str | None:
        """The run id of an interrupted run with this recipe and base version, if any."""
        folder = layout.join(self.root, layout.STAGING)
        if not self.fs.exists(folder):
            return None
        found = []
        for path in self.fs.ls(folder, detail=False):
            try:
                plan = json.loads(self.fs.cat_file(layout.join(path, PLAN)))
            except (FileNotFoundError, ValueError):
                continue  # no plan yet (it died at once) or not ours
            if plan.get("manifest_sha256") == manifest_sha256 and plan.get("base") == base:
                found.append((plan.get("started_at", ""), plan["run_id"]))
        return max(found)[1] if found else None

    def obsolete_staging(self, version: int) -> bool:
        """True when a staging is left that can never commit (based before ``version``)."""
        folder = layout.join(self.root, layout.STAGING)
        if not self.fs.exists(folder):
            return False
        for path in self.fs.ls(folder, detail=False):
            try:
                base = json.loads(self.fs.cat_file(layout.join(path, PLAN))).get("base")
            except (FileNotFoundError, ValueError):
                return True
            if base is None or base < version:
                return True
        return False

    def open(self, manifest_sha256: str, base: int | None, started_at: str) -> None:
        """Start (or continue) this run's staging: its plan says what it may be resumed as."""
        plan = {"run_id": self.run_id, "manifest_sha256": manifest_sha256, "base": base}
        path = layout.join(self.staging, PLAN)
        try:
            if not self.fs.exists(path):
                doc = json.dumps({**plan, "started_at": started_at}).encode()
                publish_bytes(self.fs, path, doc)
        except Exception as exc:  # the first write of the run: fail before any compute
            raise RunError(
                f"cannot write to output.uri {self.output.uri!r} ({type(exc).__name__}: {exc}); "
                "nothing is committed" + access_hint(exc)
            ) from exc

    def adopt(self, pending: pa.Table) -> pa.Table:
        """Take over the parts an interrupted attempt of this run wrote; return what is left.

        A part's rows count only for items still pending with the same change token (a source
        changed since the crash is done again); items quarantined for a reason worth another
        attempt (a read error, a timeout...) are done again too.
        """
        from pipelines.incremental import RETRIED

        folder = layout.join(self.staging, PARTS)
        paths = sorted(self.fs.ls(folder, detail=False)) if self.fs.exists(folder) else []
        paths = [p for p in paths if p.endswith(".parquet")]
        if not paths:
            return pending
        wanted = pc.binary_join_element_wise(pending["image_id"], pending["etag"], "\x00")
        done: list[pa.Array] = []
        for path in paths:
            part = versions.read_parquet(self.fs, path)
            token = pc.binary_join_element_wise(part["image_id"], part["source_etag"], "\x00")
            keep = pc.fill_null(pc.is_in(token, value_set=wanted), False)
            retry = pc.is_in(part["reason"], value_set=pa.array(sorted(RETRIED), pa.string()))
            part = part.filter(pc.and_(keep, pc.invert(pc.fill_null(retry, False))))
            self._count(part)
            done.append(pc.unique(part["image_id"]).cast(pa.string()))
            self.parts.append(path)
        ids = pa.chunked_array(done, pa.string())
        self.adopted_items = len(pc.unique(ids))
        return pending.filter(pc.invert(pc.is_in(pending["image_id"], value_set=ids)))

    def add(self, work: pa.Table) -> None:
        """Append one batch of work rows; a part is written when enough have gathered."""
        start = time.perf_counter()
        self._count(work)
        # A copy on this process's heap: the batch Ray handed over lives in its object store,
        # and holding it until the part is written would pin that store memory meanwhile.
        self._buffer.append(work.take(pa.array(range(work.num_rows), pa.int64())))
        self._buffered += work.num_rows
        if self._buffered >= PART_ROWS or time.monotonic() - self._since >= self.checkpoint_s:
            self._write_part()
        self.index_write_s += time.perf_counter() - start

    def flush(self) -> None:
        """Write the buffered rows as a part now (timed like every other index write)."""
        start = time.perf_counter()
        self._write_part()
        self.index_write_s += time.perf_counter() - start

    def _count(self, work: pa.Table) -> None:
        ok = pc.sum(pc.equal(work["status"], "ok")).as_py() or 0
        self.rows_ok += ok
        self.rows_quarantined += work.num_rows - ok
        if work.num_rows > ok:
            for reason in work.filter(pc.not_equal(work["status"], "ok"))["reason"].to_pylist():
                self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def _write_part(self) -> None:
        self._since = time.monotonic()
        if not self._buffered:  # nothing, or only empty blocks: no empty part
            self._buffer = []
            return
        table = pa.concat_tables(self._buffer).select(WORK_SCHEMA.names).cast(WORK_SCHEMA)
        self._buffer, self._buffered = [], 0
        data = io.BytesIO()
        pq.write_table(table, data, compression="zstd", row_group_size=PART_ROWS)
        name = f"{len(self.parts):06d}-{self._writer_tag}.parquet"
        path = layout.join(self.staging, f"{PARTS}/{name}")
        publish_bytes(self.fs, path, data.getvalue())  # all or nothing: a crash loses the part
        self.parts.append(path)

    def part_tables(self) -> Any:
        """The staged rows, part by part, split into (index rows, quarantine rows)."""
        for path in self.parts:
            yield split_work(versions.read_parquet(self.fs, path))

    def interrupted(self) -> list[dict[str, Any]]:
        """Runs that staged rows but never committed: what a re-run would resume or sweep."""
        folder = layout.join(self.root, layout.STAGING)
        found = []
        for path in self.fs.ls(folder, detail=False) if self.fs.exists(folder) else []:
            try:
                plan = json.loads(self.fs.cat_file(layout.join(path, PLAN)))
            except (FileNotFoundError, ValueError):
                plan = {"run_id": path.rstrip("/").rsplit("/", 1)[-1]}
            parts = layout.join(path, PARTS)
            files = self.fs.ls(parts, detail=False) if self.fs.exists(parts) else []
            rows = 0
            for part in files:
                with self.fs.open(part, "rb") as handle:
                    rows += versions.parquet_file(handle).metadata.num_rows
            failed = self.fs.exists(layout.join(path, layout.RUN_RECORD))
            found.append({**plan, "parts": len(files), "rows": rows, "failed": failed})
        return found

    def abort(self, record: dict[str, Any]) -> str:
        """Keep what was staged (a re-run resumes from it), with the failed run's record."""
        path = layout.join(self.staging, layout.RUN_RECORD)
        try:
            self._write_part()
            publish_bytes(self.fs, path, json.dumps(record, indent=2).encode())
            for name, data in run_exports(record).items():  # FAIL events for lineage tools
                publish_bytes(self.fs, layout.join(self.staging, name), data)
        except Exception as exc:  # the store that failed the run may refuse this too
            why = record.get("summary", {}).get("message") or "unknown reason"
            raise RunError(
                f"run {record['run_id']} failed and nothing is committed ({why}); its record "
                f"could not be kept at {self.fs.unstrip_protocol(path)} either "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        return self.fs.unstrip_protocol(path)
