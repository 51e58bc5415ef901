"""The columns and Hugging Face features of the split shards (see hf_dataset).

One Arrow schema, ``SHARD_SCHEMA``; the two forms ``datasets`` reads features in are derived
from it: the ``huggingface`` schema metadata of each shard (``features()``) and the dataset
card's ``dataset_info.features`` list (``card_features()``).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipelines.schema import INDEX_SCHEMA

IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
# What a training loop or a dataset viewer wants of the index; the rest (every provenance
# column) stays in index.parquet, which the card points to.
SHARD_COLUMNS = (
    "image_id",
    "variant",
    "seed",
    "split",
    "inpainter",
    "mask_kind",
    "mask_fraction",
    "output_width",
    "output_height",
    "boxes",
    "labels",
    "source_sha256",
    "output_sha256",
    "mask_sha256",
    "manifest_sha256",
    "run_id",
)
SHARD_SCHEMA = pa.schema(
    [pa.field("image", IMAGE), pa.field("mask", IMAGE)]
    + [INDEX_SCHEMA.field(name).with_nullable(True) for name in SHARD_COLUMNS]
)
_DTYPES = {
    pa.string(): "string",
    pa.bool_(): "bool",
    pa.int8(): "int8",
    pa.int32(): "int32",
    pa.int64(): "int64",
    pa.float64(): "float64",
}


def features() -> dict[str, Any]:
    """The shards' features as ``datasets`` writes them into the ``huggingface`` metadata."""
    return {field.name: _feature(field.type) for field in SHARD_SCHEMA}


def _feature(kind: pa.DataType) -> dict[str, Any]:
    if kind == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        fixed = {"length": kind.list_size} if pa.types.is_fixed_size_list(kind) else {}
        return {"feature": _feature(kind.value_type), **fixed, "_type": "List"}
    return {"dtype": _DTYPES[kind], "_type": "Value"}


def card_features() -> list[dict[str, Any]]:
    """The same features in the card's YAML list form (``dataset_info.features``)."""
    listed = []
    for field in SHARD_SCHEMA:
        kind = _card_type(field.type)
        listed.append({"name": field.name, **(kind if isinstance(kind, dict) else {"dtype": kind})})
    return listed


def _card_type(kind: pa.DataType) -> str | dict[str, Any]:
    if kind == IMAGE:
        return "image"
    if pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        fixed = {"length": kind.list_size} if pa.types.is_fixed_size_list(kind) else {}
        return {"list": _card_type(kind.value_type), **fixed}
    return _DTYPES[kind]


def shard_schema() -> pa.Schema:
    """SHARD_SCHEMA with the ``huggingface`` metadata that makes ``image`` and ``mask`` images."""
    meta = {"info": {"features": features()}}
    return SHARD_SCHEMA.with_metadata({b"huggingface": json.dumps(meta).encode()})
