"""Committing a run as the dataset's next version.

Steps, each one safe to die after (the reliability tests kill the driver at every one):

1. ``parts``: the last staged rows are written.
2. ``version-files``: the version's index (the base version's unchanged rows plus this run's
   rows), quarantine table, run record (with the Merkle root and table hashes; signed when
   ``output.sign_record`` is set) and its OpenLineage and PROV-JSON exports are written under
   ``versions/<N>-<run_id>/``, and the recipe under ``recipes/``: a folder no reader follows
   until step 3, and no other run writes.
3. ``record``: ``versions/<N>.json`` is created create-only. This is the commit: of two runs
   racing for N exactly one gets here; the other fails with VersionConflict.
4. ``pointer``: ``_COMMITTED`` names version N; then the single-path copies are refreshed.
5. Clean-up: staging, versions beyond ``output.keep_versions``, outputs no kept version points
   to, and abandoned multipart uploads. Only files older than the record are removed, so a
   run that started after this commit never loses a file it just wrote. A failure here is a
   warning: the dataset is committed; the next run cleans up again.
"""

from __future__ import annotations

import hashlib
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
from pipelines.croissant import CROISSANT, croissant
from pipelines.exports import run_exports
from pipelines.faults import strike
from pipelines.hf_dataset import dataset_card, write_split_shards
from pipelines.incremental import Delta
from pipelines.integrity import HashingWriter, MerkleTree
from pipelines.manifest import recipe_bytes
from pipelines.schema import INDEX_SCHEMA, QUARANTINE_SCHEMA, conform
from pipelines.signing import SIGNATURE_SUFFIX, sign
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
    signing_key: Any = None,
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
    counts, integrity = _write_tables(sink, folder, carried, delta)
    record["version"] = number
    record["integrity"] = integrity
    _store_recipe(sink, record)
    card = _write_hf_dataset(sink, folder, record)
    record_bytes = _json(record)
    publish_bytes(fs, layout.join(root, f"{folder}/{layout.RUN_RECORD}"), record_bytes)
    for name, data in run_exports(record).items():  # OpenLineage, PROV-JSON
        publish_bytes(fs, layout.join(root, f"{folder}/{name}"), data)
    if signing_key is not None:  # detached: the record's bytes stay exactly as signed
        signature = sign(record_bytes, signing_key)
        publish_bytes(
            fs, layout.join(root, f"{folder}/{layout.RUN_RECORD}{SIGNATURE_SUFFIX}"), signature
        )
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
        card=card,
        **counts,
    )
    versions.commit_record(fs, root, version)
    strike("commit:record")
    versions.publish_latest(fs, root, version)
    strike("commit:copies")
    clean_up(sink, version, touched)
    return version


def _store_recipe(sink: DatasetSink, record: dict[str, Any]) -> None:
    """``recipes/<manifest_sha256>.json``: kept for as long as the dataset, so every row's
    fingerprint resolves to its recipe (and the file checks against its own name)."""
    data = recipe_bytes(record["recipe"])
    if hashlib.sha256(data).hexdigest() != record["manifest_sha256"]:
        raise RuntimeError("the recorded recipe does not hash to manifest_sha256")  # a bug
    path = layout.join(sink.root, layout.recipe_key(record["manifest_sha256"]))
    if not sink.fs.exists(path):  # content-addressed: an existing one has these bytes
        publish_bytes(sink.fs, path, data)


def _write_hf_dataset(sink: DatasetSink, folder: str, record: dict[str, Any]) -> str:
    """Split shards, their Croissant metadata and the dataset card (see hf_dataset); the
    card's key."""
    fs, root = sink.fs, sink.root
    index_key = f"{folder}/{layout.INDEX}"
    written = record["integrity"]["root"]
    digests: dict[str, dict[str, Any]] = {}
    embedded = sink.output.embed_images
    shards, counts = write_split_shards(
        fs, root, folder, index_key, written, embedded, digests=digests
    )
    croissant_key = f"{folder}/{CROISSANT}"
    record["hf_dataset"] = {
        "shards": shards,
        "rows": counts,
        "embed_images": embedded,
        "files": digests,  # shard key -> sha256 and bytes, as written
        "croissant": croissant_key,
    }
    metadata = croissant(record, shards, digests, embedded=embedded)
    publish_bytes(fs, layout.join(root, croissant_key), metadata)
    key = f"{folder}/{versions.CARD}"
    sizes = {s: sum(digests[k]["bytes"] for k in keys) for s, keys in shards.items()}
    card = dataset_card(record, shards, counts, sizes, croissant=croissant_key)
    publish_bytes(fs, layout.join(root, key), card)
    return key


def _write_tables(
    sink: DatasetSink, folder: str, base: versions.Version | None, delta: Delta
) -> tuple[dict[str, int], dict[str, Any]]:
    """Write the version's index and quarantine; their counts and integrity figures."""
    fs, root = sink.fs, sink.root
    root_uri = fs.unstrip_protocol(root)
    tree = MerkleTree()
    ok_ids: list[pa.Array] = []
    bad_ids: list[pa.Array] = []
    index_key, bad_key = f"{folder}/{layout.INDEX}", f"{folder}/{layout.QUARANTINE}"
    with (
        parquet_writer(fs, layout.join(root, index_key), INDEX_SCHEMA) as (index, index_hash),
        parquet_writer(fs, layout.join(root, bad_key), QUARANTINE_SCHEMA) as (bad, bad_hash),
    ):

        def rows(table: pa.Table) -> None:
            index.write_table(table)
            tree.add_rows(table, root_uri)
            ok_ids.append(table["image_id"].combine_chunks())

        def quarantined(table: pa.Table) -> None:
            bad.write_table(table)
            bad_ids.append(table["image_id"].combine_chunks())

        if base is not None:
            for table in _kept(sink, base.index, delta.keep_ok):
                rows(conform(table, INDEX_SCHEMA))
            for table in _kept(sink, base.quarantine, delta.keep_quarantined):
                quarantined(conform(table, QUARANTINE_SCHEMA))
        for good, bad_rows in sink.part_tables():
            if good.num_rows:
                rows(good)
            if bad_rows.num_rows:
                quarantined(bad_rows)
    counts = {
        "rows": tree.count,
        "items_ok": _distinct(ok_ids),
        "items_quarantined": _distinct(bad_ids),
    }
    integrity = {
        **tree.summary(),
        "root": root_uri,  # keys are relative to it (the dataset may be copied elsewhere later)
        "leaf": "sha256(0x00 || output key NUL output_sha256 NUL mask key NUL mask_sha256), "
        "keys relative to the dataset root, in index row order",
        "files": {
            index_key: {"sha256": index_hash.sha256.hexdigest(), "bytes": index_hash.size},
            bad_key: {"sha256": bad_hash.sha256.hexdigest(), "bytes": bad_hash.size},
        },
    }
    return counts, integrity


def _kept(sink: DatasetSink, key: str, ids: pa.Array) -> Iterator[pa.Table]:
    """The base version's rows for ``ids``, a row group at a time."""
    if not len(ids):
        return
    path = layout.join(sink.root, key)
    # row group by row group, in this thread (see versions.read_parquet)
    with sink.fs.open(path, "rb") as handle, versions.parquet_file(handle) as parquet:
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, use_threads=False)
            table = table.filter(pc.is_in(table["image_id"], value_set=ids))
            if table.num_rows:
                yield table


@contextmanager
def parquet_writer(
    fs: Any, path: str, schema: pa.Schema
) -> Iterator[tuple[pq.ParquetWriter, HashingWriter]]:
    """A zstd Parquet writer streaming to ``path`` (not atomic: for files no reader follows),
    and the hash of the bytes it wrote (complete once the block exits)."""
    # Streamed: an index of 100 M rows never sits in memory. A failure may leave a cut file
    # here, but no record names this folder yet and a retry of this run rewrites it.
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        hashing = HashingWriter(handle)
        with pq.ParquetWriter(hashing, schema, compression="zstd") as writer:
            yield writer, hashing


def _distinct(chunks: list[pa.Array]) -> int:
    return len(pc.unique(pa.chunked_array(chunks, pa.string()))) if chunks else 0


def _json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()
