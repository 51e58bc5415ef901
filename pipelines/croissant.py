"""Croissant 1.0 metadata (JSON-LD) for a version's split shards.

Croissant (MLCommons) is what dataset search engines, the Hub and loaders such as
``mlcroissant``, TFDS and PyTorch read to find a dataset's files and fields without knowing
synthfill. Written as ``versions/<N>-<run_id>/croissant.json``; every path in it is relative to
that folder. The distribution lists each shard with its sha256 (hashed as it was written) and a
FileSet of all of them, which one record set (``default``) reads: one field per shard column,
``image`` and ``mask`` as ``sc:ImageObject`` when the shards embed the bytes, else as the
``sc:URL`` of the file.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipelines.hf_features import IMAGE, SHARD_SCHEMA

CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
CROISSANT = "croissant.json"  # beside each version's shards
FILE_SET = "parquet-shards"
RECORD_SET = "default"
_CR = "cr:"
# The standard context (as mlcroissant writes it): readers warn about any other.
_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "sc": "https://schema.org/",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "dct": "http://purl.org/dc/terms/",
    "conformsTo": "dct:conformsTo",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "examples": {"@id": "cr:examples", "@type": "@json"},
    **{
        name: f"{_CR}{name}"
        for name in [
            "citeAs",
            "column",
            "equivalentProperty",
            "extract",
            "field",
            "fileProperty",
            "fileObject",
            "fileSet",
            "format",
            "includes",
            "isLiveDataset",
            "jsonPath",
            "key",
            "md5",
            "parentField",
            "path",
            "recordSet",
            "references",
            "regex",
            "repeated",
            "replace",
            "samplingRate",
            "separator",
            "source",
            "subField",
            "transform",
        ]
    },
}
_SCALARS = {
    pa.string(): "sc:Text",
    pa.bool_(): "sc:Boolean",
    pa.int8(): "sc:Integer",
    pa.int32(): "sc:Integer",
    pa.int64(): "sc:Integer",
    pa.float64(): "sc:Float",
}

_DESCRIPTIONS = {
    "image": "The synthetic image (the inpainted output).",
    "mask": "What was filled: a 1-bit image, white = filled.",
    "boxes": "Objects still in the image: [x1, y1, x2, y2] in output pixels, one per label.",
    "labels": "The class of each box.",
    "seed": "The variant's 63-bit seed: the row can be made again from it and the recipe.",
    "split": "train, val or test, from a hash of the source's group key.",
}


def croissant(
    record: dict[str, Any],
    shards: dict[str, list[str]],
    digests: dict[str, dict[str, Any]],
    *,
    embedded: bool,
    license: str | None = None,
) -> bytes:
    """The version's ``croissant.json``.

    ``record`` is the version's run record; ``shards`` and ``digests`` what
    ``hf_dataset.write_split_shards`` returned and filled (shard key -> sha256 and bytes);
    ``embedded`` whether the shards carry the image bytes (``output.embed_images``).
    """
    recipe = record.get("recipe") or {}
    doc: dict[str, Any] = {
        "@context": _CONTEXT,
        "@type": "sc:Dataset",
        "name": record["name"],
        "conformsTo": CONFORMS_TO,
        "description": _description(record, recipe),
        "version": f"{record['version']}.0.0",  # Croissant wants MAJOR.MINOR.PATCH
        "datePublished": record.get("finished_at"),
        "keywords": ["synthetic", "inpainting", "image", "synthfill"],
        "distribution": _distribution(shards, digests),
        "recordSet": [_record_set(embedded)],
    }
    if license:
        doc["license"] = license
    return json.dumps({k: v for k, v in doc.items() if v is not None}, indent=2).encode()


def _description(record: dict[str, Any], recipe: dict[str, Any]) -> str:
    return (
        f"Synthetic images made from real images by inpainting with synthfill, "
        f"{recipe.get('variants')} seeded variants per source; version {record['version']}, "
        f"run {record['run_id']}, recipe sha256 {record['manifest_sha256']}. "
        "How each row was made: run.json, prov.json and index.parquet beside this file."
    )


def _distribution(
    shards: dict[str, list[str]], digests: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = []
    for key in (k for keys in shards.values() for k in keys):
        name = _relative(key)
        files.append(
            {
                "@type": "cr:FileObject",
                "@id": name,
                "name": name,
                "contentUrl": name,
                "contentSize": f"{digests[key]['bytes']} B",
                "encodingFormat": "application/x-parquet",
                "sha256": digests[key]["sha256"],
            }
        )
    every = {
        "@type": "cr:FileSet",
        "@id": FILE_SET,
        "name": FILE_SET,
        "description": "Every split's shards: data/{split}-{k:05d}-of-{n:05d}.parquet.",
        "encodingFormat": "application/x-parquet",
        "includes": "data/*.parquet",
    }
    return [*files, every]


def _relative(key: str) -> str:
    """A shard key (``versions/<N>-<run_id>/data/<name>``) as seen from the version folder."""
    return "data/" + key.rsplit("/", 1)[-1]


def _record_set(embedded: bool) -> dict[str, Any]:
    return {
        "@type": "cr:RecordSet",
        "@id": RECORD_SET,
        "name": RECORD_SET,
        "description": "One row per (image_id, variant, inpainter); see the dataset card.",
        "field": [_field(f, embedded) for f in SHARD_SCHEMA],
    }


def _field(field: pa.Field, embedded: bool) -> dict[str, Any]:
    source: dict[str, Any] = {"fileSet": {"@id": FILE_SET}, "extract": {"column": field.name}}
    kind, repeated = field.type, False
    if kind == IMAGE:  # the Image struct {bytes, path}: one of its members
        source["transform"] = {"jsonPath": "bytes" if embedded else "path"}
        data_type = "sc:ImageObject" if embedded else "sc:URL"
    elif pa.types.is_list(kind):
        # Boxes are lists of [x1, y1, x2, y2] floats, not cr:BoundingBox: mlcroissant 1.1
        # cannot read repeated boxes from Parquet (it gets numpy arrays where it wants lists).
        inner = kind.value_type
        data_type = _SCALARS[inner.value_type if pa.types.is_fixed_size_list(inner) else inner]
        repeated = True
    else:
        data_type = _SCALARS[kind]
    described = {
        "@type": "cr:Field",
        "@id": f"{RECORD_SET}/{field.name}",
        "name": field.name,
        "description": _DESCRIPTIONS.get(field.name),
        "dataType": data_type,
        "source": source,
    }
    if repeated:
        described["repeated"] = True
    return {k: v for k, v in described.items() if v is not None}
