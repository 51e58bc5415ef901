"""After a commit: remove what no kept version needs, but only what is older than the commit.

Files written after the commit record may belong to a run that started after this commit (its
base is this version), so the sweep never touches them: every removal is of a file whose
modification time (on the store's clock) is before the record's.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import layout, versions
from pipelines.sink import _OURS, PLAN, DatasetSink
from pipelines.storage import abort_multipart_uploads

# "images/3f" and "masks/3f/": the start of every key in one shard folder (layout.shard)
_SHARD_HEAD = 9
_log = logging.getLogger("synthfill")


def clean_up(sink: DatasetSink, version: versions.Version, touched: pa.Array | None = None) -> None:
    """Every step of the sweep; a failure is a warning (the dataset is committed already).

    ``touched``: the image_ids this run processed. Outputs only a dropped version pointed to
    are deleted by key; folders are listed only where leftovers can be: the shards of touched
    ids after quarantines or a resume, every shard after an abandoned run (its writes are not
    known) or without ``touched``. Listing 100 M outputs takes about an hour, so a quiet night
    lists nothing.
    """
    fs, root = sink.fs, sink.root
    try:
        cutoff = modified(fs.info(layout.join(root, versions.record_key(version.version))))
        kept, dropped = _retain(fs, root, version, sink.output.keep_versions, cutoff)
        abandoned = _remove_stagings(fs, root, version.version, cutoff, sink.run_id)
        keep, spans = _referenced_by_shard(fs, root, kept)
        _remove_dropped(fs, root, dropped, keep)
        if abandoned or touched is None or (version.parent is None and not sink.started_empty):
            remove_unreferenced(fs, root, keep, spans, cutoff)
        elif sink.rows_quarantined or sink.adopted_items:
            heads = set(pc.unique(touched.cast(pa.string())).to_pylist())
            shards = {layout.shard(image_id) for image_id in heads}
            remove_unreferenced(fs, root, keep, spans, cutoff, shards)
        # Nothing of this run is in flight now: pending uploads older than the commit were
        # left by killed processes: invisible, but stored and billed until aborted.
        sink.aborted_uploads = abort_multipart_uploads(
            fs, root, lambda key: key.split("/", 1)[0] in _OURS, before=cutoff
        )
    except Exception as exc:  # e.g. no s3:ListBucketMultipartUploads permission
        _log.warning(
            "%s: version %s is committed, but cleaning up after it failed (%s: %s); the next "
            "run cleans up again",
            sink.output.uri,
            version.version,
            type(exc).__name__,
            exc,
        )


def modified(info: dict[str, Any]) -> float:
    """Modification time in epoch seconds from an fsspec info dict (local or S3)."""
    value = info.get("LastModified", info.get("mtime"))
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value) if value is not None else float("inf")


def _retain(
    fs: fsspec.AbstractFileSystem,
    root: str,
    version: versions.Version,
    keep: int,
    cutoff: float,
) -> tuple[list[versions.Version], list[pa.Array]]:
    """Drop versions older than the newest ``keep`` (record first, then files).

    Returns the kept versions and the output keys the dropped ones pointed to.
    """
    known = [v for v in versions.all_versions(fs, root) if v.version <= version.version]
    kept, old = known[-keep:], known[:-keep]
    dropped = [_keys(fs, root, v) for v in old]
    for v in old:
        fs.rm(layout.join(root, versions.record_key(v.version)))
    folders = {v.folder for v in kept}
    base = layout.join(root, versions.VERSIONS)
    for path in fs.ls(base, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        number = name.split("-", 1)[0]
        stale = not name.endswith(".json") and f"{versions.VERSIONS}/{name}" not in folders
        if stale and number.isdigit() and int(number) <= version.version:
            _remove_older(fs, path, cutoff)
    return kept, dropped


def _keys(fs: fsspec.AbstractFileSystem, root: str, version: versions.Version) -> pa.Array:
    """The output and mask keys (relative to root) a version's index points to."""
    prefix = len(fs.unstrip_protocol(root).rstrip("/")) + 1
    table = versions.read_table(fs, root, version.index, ["output_uri", "mask_uri"])
    # large_string: two keys per row pass 2 GiB of text (int32 offsets) near 24 M rows
    chunks = [
        chunk
        for col in table.columns
        for chunk in pc.utf8_slice_codeunits(col.cast(pa.large_string()), prefix).chunks
    ]
    return pa.chunked_array(chunks, pa.large_string()).combine_chunks()


def _remove_dropped(
    fs: fsspec.AbstractFileSystem, root: str, dropped: list[pa.Array], keep: pa.Array
) -> None:
    """Delete, by key, the outputs that only dropped versions pointed to (no listing)."""
    for keys in dropped:
        gone = keys.filter(pc.invert(pc.is_in(keys, value_set=keep))).to_pylist()
        for start in range(0, len(gone), 1000):  # one DeleteObjects request per 1,000 keys
            paths = [layout.join(root, key) for key in gone[start : start + 1000]]
            fs.rm([p for p in paths if fs.exists(p)] if len(paths) < 50 else paths)


def _remove_stagings(
    fs: fsspec.AbstractFileSystem, root: str, number: int, cutoff: float, mine: str
) -> bool:
    """Remove stagings that can never commit now (based on an older version, or none).

    Returns True when one of another run was among them: that run's writes are not known.
    """
    folder = layout.join(root, layout.STAGING)
    if not fs.exists(folder):
        return False
    abandoned = False
    for path in fs.ls(folder, detail=False):
        try:
            base = json.loads(fs.cat_file(layout.join(path, PLAN))).get("base")
        except (FileNotFoundError, ValueError):
            base = None
        if base is None or base < number:
            abandoned = abandoned or path.rstrip("/").rsplit("/", 1)[-1] != mine
            _remove_older(fs, path, cutoff)
    return abandoned


def _remove_older(fs: fsspec.AbstractFileSystem, path: str, cutoff: float) -> None:
    found = fs.find(path, detail=True)
    old = [p for p, info in found.items() if modified(info) < cutoff]
    if old:
        fs.rm(old)
    if fs.exists(path) and not fs.find(path):  # local folders stay behind once emptied
        fs.rm(path, recursive=True)


def remove_unreferenced(
    fs: fsspec.AbstractFileSystem,
    root: str,
    keep: pa.Array,
    spans: dict[str, tuple[int, int]],
    cutoff: float,
    shards: set[str] | None = None,
) -> None:
    """Delete files under images/ and masks/ that no kept version points to.

    Outputs are listed one shard folder (1/256 of them) at a time and compared with that
    shard's slice of the referenced keys, which stay one sorted Arrow array: memory and
    time grow linearly with the dataset (a Python set of every key took ~6x the memory).
    ``shards`` limits the listing to those shard folders.
    """
    for folder in (layout.IMAGES, layout.MASKS):
        path = layout.join(root, folder)
        if shards is None:
            folders = fs.ls(path, detail=False) if fs.exists(path) else []
        else:
            folders = [layout.join(path, s) for s in sorted(shards)]
        for shard in folders:
            if shards is not None and not fs.exists(shard):
                continue
            head = (shard[len(root) + 1 :] + "/")[:_SHARD_HEAD]
            first, last = spans.get(head, (0, 0))
            found = fs.find(shard, detail=True)
            paths = list(found)
            listed = pa.array([p[len(root) + 1 :] for p in paths], pa.large_string())
            known = pc.is_in(listed, value_set=keep.slice(first, last - first))
            stale = [paths[i] for i in pc.indices_nonzero(pc.invert(known)).to_pylist()]
            stale = [p for p in stale if modified(found[p]) < cutoff]
            if stale:
                fs.rm(stale)


def _referenced_by_shard(
    fs: fsspec.AbstractFileSystem, root: str, kept: list[versions.Version]
) -> tuple[pa.Array, dict[str, tuple[int, int]]]:
    """Every key a kept version points to, sorted, and where each shard's keys start and end."""
    chunks = [_keys(fs, root, version) for version in kept]
    if not chunks:
        return pa.array([], pa.large_string()), {}
    keep = pa.chunked_array(chunks, pa.large_string()).combine_chunks()
    keep = pc.unique(keep) if len(kept) > 1 else keep
    keep = keep.take(pc.array_sort_indices(keep))
    runs = pc.run_end_encode(pc.utf8_slice_codeunits(keep, 0, _SHARD_HEAD))
    spans, first = {}, 0
    for head, last in zip(runs.values.to_pylist(), runs.run_ends.to_pylist(), strict=True):
        spans[head], first = (first, last), last
    return keep, spans
