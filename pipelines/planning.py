"""Planning a run: list the sources, compare them with the latest version, build the work.

No pixels are read here. ``PlannedRun`` is what ``pipeline plan`` shows; ``Work`` adds what a
run must do relative to the dataset's latest committed version (``pipelines.incremental``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import RunError
from pipelines.incremental import Delta, diff, everything
from pipelines.listing import ListingCounts
from pipelines.manifest import Manifest
from pipelines.manifest_loader import LoadedManifest
from pipelines.sink import DatasetSink
from pipelines.sources import Annotations, SourceItem, load_annotations, source_table
from pipelines.versions import Version, read_table

_log = logging.getLogger("synthfill")


@dataclass(frozen=True)
class PlannedRun:
    """The items a run would process, known before any compute (``pipeline plan``).

    ``sources`` holds one row per item (``listing.ITEM_SCHEMA``, sorted by image_id): one Arrow
    table rather than an object per item, so a plan of 100 M items fits in the driver.
    """

    sources: pa.Table
    annotations: dict[str, Annotations]
    annotated: int
    unmatched_annotations: int
    rows_expected: int
    listing: ListingCounts = field(default_factory=ListingCounts)

    @property
    def items(self) -> list[SourceItem]:
        """The items as Python objects (one per item: for small plans)."""
        return [SourceItem(**row) for row in self.sources.to_pylist()]


def plan_run(loaded: LoadedManifest, limit: int | None = None) -> PlannedRun:
    """List sources (or read the inventory) and join annotations; no pixels are read."""
    m = loaded.manifest
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    sources, counts = source_table(m.source)
    if limit is not None:
        sources = sources.slice(0, limit)
    annotations = (
        load_annotations(m.source.annotations, m.source.storage_options)
        if m.source.annotations
        else {}
    )
    annotated = unmatched = 0
    if annotations:
        ids, keys = annotation_keys(sources), pa.array(list(annotations), pa.string())
        annotated = pc.sum(pc.is_in(ids, value_set=keys)).as_py() or 0
        unmatched = len(keys) - (pc.sum(pc.is_in(keys, value_set=ids)).as_py() or 0)
    rows = sources.num_rows * m.variants
    return PlannedRun(sources, annotations, annotated, unmatched, rows, counts)


@dataclass(frozen=True)
class Work:
    """What a run has to do relative to the dataset's latest version."""

    planned: PlannedRun
    base: Version | None
    delta: Delta
    carry_over: bool  # the base was made by this recipe: its unchanged rows are kept
    to_process: pa.Table  # the pending sources this run takes on (after --limit)
    resumes: str | None = None  # the interrupted run this one continues

    @property
    def base_version(self) -> int | None:
        return self.base.version if self.base else None

    @property
    def up_to_date(self) -> bool:
        return self.base is not None and self.carry_over and not self.delta.removed

    def describe(self) -> dict[str, Any]:
        d = self.delta
        return {
            "base_version": self.base_version,
            "carried_over": self.carry_over,
            "listed": self.planned.sources.num_rows,
            "new": d.new,
            "changed": d.changed,
            "retried": d.retried,
            "unchanged": d.unchanged,
            "removed": d.removed,
            "pending": d.pending.num_rows,
            "processing": self.to_process.num_rows,
        }


def plan_work(
    loaded: LoadedManifest, sink: DatasetSink, limit: int | None = None, repair: bool = True
) -> Work:
    """List sources and compare them with the latest committed version (no pixels read).

    A run that was interrupted with this recipe and base is adopted (the sink takes its run id).
    ``repair=False`` only looks (``pipeline plan`` and ``status``).
    """
    m = loaded.manifest
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be at least 1, got {limit}")
    base = sink.check_target(repair)
    planned = plan_run(loaded)
    if not planned.sources.num_rows:
        raise RunError(_no_items(m, planned.listing))
    carry = base is not None and base.manifest_sha256 == loaded.fingerprint
    # version 0: a dataset from before versions, without the change tokens to compare
    carry = carry and not m.output.overwrite and base is not None and base.version > 0
    if carry:
        assert base is not None
        untracked = planned.sources["etag"].null_count
        if untracked:
            _log.warning(
                "%d sources have no change token (ETag or mtime) in the listing or inventory: "
                "they are processed again every run; give the inventory an etag column",
                untracked,
            )
        ok = read_table(sink.fs, sink.root, base.index, ["image_id", "source_etag"])
        bad = read_table(sink.fs, sink.root, base.quarantine, ["image_id", "source_etag", "reason"])
        delta = diff(planned.sources, ok, bad)
    else:
        delta = everything(planned.sources)
    resumed = sink.resumable(loaded.fingerprint, base.version if base else None)
    if resumed is not None:
        sink.run_id = resumed
    pending = delta.pending if limit is None else delta.pending.slice(0, limit)
    return Work(planned, base, delta, carry, pending, resumed)


def _no_items(m: Manifest, counts: ListingCounts) -> str:
    if counts.inventory:
        return (
            f"no images in source.inventory {counts.inventory!r} match glob {m.source.glob!r} "
            f"under source.uri {m.source.uri!r} ({counts.found} keys read, "
            f"{counts.outside_root} outside source.uri)"
        )
    return f"no images under source.uri {m.source.uri!r} match glob {m.source.glob!r}"


def work_table(planned: PlannedRun) -> pa.Table:
    """The per-item payload sent to workers, one row per item: image_id, uri, size, etag and
    the joined boxes/labels as list columns (``[]`` without annotations).

    Built column by column: about 100 bytes per item, no Python object per item.
    """
    sources = planned.sources
    boxes, labels = _annotation_columns(annotation_keys(sources), planned.annotations)
    return sources.append_column("boxes", boxes).append_column("labels", labels)


def work_items(planned: PlannedRun) -> list[dict[str, Any]]:
    """``work_table`` as one dict per item (for small plans: benchmarks, training)."""
    return work_table(planned).to_pylist()


_BOXES = pa.list_(pa.list_(pa.float64()))
_LABELS = pa.list_(pa.string())


def annotation_keys(sources: pa.Table) -> pa.ChunkedArray:
    """What annotations are matched on: the real relative path (``source_key``) where ids are
    pseudonyms, else the image_id (the same path)."""
    return sources["source_key"] if "source_key" in sources.column_names else sources["image_id"]


def _annotation_columns(
    ids: pa.ChunkedArray, annotations: dict[str, Annotations]
) -> tuple[pa.Array, pa.Array]:
    if not annotations:
        empty = pa.array(np.zeros(len(ids) + 1, dtype=np.int32))
        return (
            pa.ListArray.from_arrays(empty, pa.array([], _BOXES.value_type)),
            pa.ListArray.from_arrays(empty, pa.array([], pa.string())),
        )
    names = list(annotations)
    # one row per annotated image plus a last empty row that unannotated items point to
    boxes = pa.array([annotations[n].boxes.tolist() for n in names] + [[]], _BOXES)
    labels = pa.array([list(annotations[n].labels) for n in names] + [[]], _LABELS)
    where = pc.fill_null(pc.index_in(ids, value_set=pa.array(names, pa.string())), len(names))
    return boxes.take(where), labels.take(where)
