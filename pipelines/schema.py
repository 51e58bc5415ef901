"""Explicit Arrow schemas of the dataset index and the quarantine table (names are a contract)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

_BOX = pa.list_(pa.float64(), 4)

# Lineage columns shared by index and quarantine rows.
_LINEAGE = [
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("variant", pa.int32()),
    pa.field("seed", pa.int64()),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("source_sha256", pa.string()),
    pa.field("source_etag", pa.string()),  # the listing's change token (ETag, or size+mtime)
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("manifest_sha256", pa.string(), nullable=False),
    pa.field("code_version", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("elapsed_ms", pa.float64()),
]

INDEX_SCHEMA = pa.schema(
    _LINEAGE
    + [
        pa.field("split", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("channels", pa.int8()),
        pa.field("bit_depth", pa.int8()),
        pa.field("mask_kind", pa.string()),
        pa.field("mask_params", pa.string()),  # JSON: the generator specs
        pa.field("mask_info", pa.string()),  # JSON: what each generator reached (coverage, k, ...)
        pa.field("mask_fraction", pa.float64()),
        pa.field("mask_uri", pa.string()),
        pa.field("mask_sha256", pa.string()),
        pa.field("inpainter", pa.string()),
        pa.field("inpainter_params", pa.string()),  # JSON
        pa.field("weights_sha256", pa.string()),
        pa.field(
            "inpaint_device", pa.string()
        ),  # cpu or cuda: GPU fills may differ in the last bit
        pa.field("fill_leak_max", pa.float64()),  # largest change the fill made outside the mask
        pa.field("fill_blank", pa.bool_()),  # every hole pixel the same value (black output)
        pa.field("augment_params", pa.string()),  # JSON: applied transforms and their drawn values
        pa.field("output_uri", pa.string()),
        pa.field("output_sha256", pa.string()),
        pa.field("output_width", pa.int32()),
        pa.field("output_height", pa.int32()),
        pa.field("boxes", pa.list_(_BOX)),  # x1, y1, x2, y2 of the objects still in the output
        pa.field("labels", pa.list_(pa.string())),
        pa.field("removed_boxes", pa.list_(_BOX)),  # source-pixel boxes the edit erased
        pa.field("removed_labels", pa.list_(pa.string())),
        # The annotations the row was made from, as given (source pixels): with the recipe and
        # the source bytes they are everything needed to make the row again.
        pa.field("source_boxes", pa.list_(_BOX)),
        pa.field("source_labels", pa.list_(pa.string())),
    ],
    metadata={b"synthfill.table": b"index", b"synthfill.schema_version": b"2"},
)

QUARANTINE_SCHEMA = pa.schema(
    _LINEAGE + [pa.field("reason", pa.string(), nullable=False), pa.field("stage", pa.string())],
    metadata={b"synthfill.table": b"quarantine", b"synthfill.schema_version": b"1"},
)

# What an actor returns for a batch: every index column plus the quarantine-only ones.
WORK_SCHEMA = pa.schema(
    list(INDEX_SCHEMA) + [pa.field("reason", pa.string()), pa.field("stage", pa.string())]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``: columns an older version of the schema lacked become nulls."""
    for name in schema.names:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    return table.select(schema.names).cast(schema)


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts; missing keys become null) as a table with the work schema."""
    return pa.Table.from_pylist(rows, schema=WORK_SCHEMA)


def split_work(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Separate a work table into (index rows, quarantine rows) with their own schemas."""
    ok = pc.equal(table["status"], "ok")
    if pc.all(ok).as_py():  # the usual batch: skip the filters
        index, bad = table, table.slice(0, 0)
    else:
        index, bad = table.filter(ok), table.filter(pc.invert(ok))
    return (
        index.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA),
        bad.select(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA),
    )
