"""``pipeline lineage``: how one output was made, from the dataset's own records.

The chain source -> masks (generator, parameters, seed) -> inpainter (weights sha256) ->
augmentation -> output, with the recipe excerpt the row's ``manifest_sha256`` stands for and a
Merkle inclusion proof tying the row to the run record's root.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow.compute as pc

from pipelines import layout, versions
from pipelines.audit import Committed
from pipelines.errors import RunError
from pipelines.exports import row_prov
from pipelines.integrity import inclusion_proof, iter_leaves, leaf_data, leaf_hash, verify_inclusion

RECIPE_EXCERPT = ("seed", "variants", "source", "masks", "inpainter", "augment", "split", "output")


def find_rows(ds: Committed, image_id: str) -> list[tuple[int, dict[str, Any]]]:
    """(position in the index, row) of every row of ``image_id``."""
    found, offset = [], 0
    for table in ds.rows(None):  # every column
        hits = pc.indices_nonzero(pc.equal(table["image_id"], image_id)).to_pylist()
        found += [(offset + i, table.slice(i, 1).to_pylist()[0]) for i in hits]
        offset += table.num_rows
    return found


def lineage(
    ds: Committed, image_id: str, variant: int | None = None, inpainter: str | None = None
) -> dict[str, Any]:
    """Everything the dataset records about how ``image_id``'s outputs were made."""
    rows = [
        (position, row)
        for position, row in find_rows(ds, image_id)
        if (variant is None or row["variant"] == variant)
        and (inpainter is None or row["inpainter"] == inpainter)
    ]
    if not rows:
        raise RunError(_not_found(ds, image_id, variant))
    return {
        "dataset": ds.uri,
        "version": ds.version.version,
        "image_id": image_id,
        "chains": [chain(ds, position, row) for position, row in rows],
    }


def _not_found(ds: Committed, image_id: str, variant: int | None) -> str:
    what = f"{image_id!r}" + (f" variant {variant}" if variant is not None else "")
    quarantined = ds.fs.exists(layout.join(ds.root, ds.version.quarantine))
    hint = "; it may be quarantined: see quarantine.parquet" if quarantined else ""
    return f"version {ds.version.version} of {ds.uri} has no row for {what}{hint}"


def chain(ds: Committed, position: int, row: dict[str, Any]) -> dict[str, Any]:
    """One row's steps, its run and recipe, and its Merkle proof."""
    recipe = _recipe(ds, row["manifest_sha256"])
    return {
        "row": {"position": position, **{k: row[k] for k in ("variant", "seed", "split")}},
        "source": {
            "uri": row["source_uri"],
            "sha256": row["source_sha256"],
            "etag": row["source_etag"],
            "size": [row["width"], row["height"], row["channels"], row["bit_depth"]],
            "annotations": {"boxes": row["source_boxes"], "labels": row["source_labels"]},
        },
        "masks": {
            "kind": row["mask_kind"],
            "generators": json.loads(row["mask_params"]),
            "seed": row["seed"],
            "reached": json.loads(row["mask_info"] or "{}"),
            "fraction": row["mask_fraction"],
            "uri": row["mask_uri"],
            "sha256": row["mask_sha256"],
        },
        "inpainter": {
            "label": row["inpainter"],
            "params": json.loads(row["inpainter_params"]),
            "weights_sha256": row["weights_sha256"],
            "device": row["inpaint_device"],
            "leak_outside_mask": row["fill_leak_max"],
        },
        "augment": json.loads(row["augment_params"] or "[]"),
        "output": {
            "uri": row["output_uri"],
            "sha256": row["output_sha256"],
            "size": [row["output_width"], row["output_height"]],
            "boxes": row["boxes"],
            "labels": row["labels"],
            "removed": {"boxes": row["removed_boxes"], "labels": row["removed_labels"]},
        },
        "run": _run(ds, row),
        "recipe": {
            "manifest_sha256": row["manifest_sha256"],
            "stored": recipe is not None,
            "excerpt": {k: recipe[k] for k in RECIPE_EXCERPT if k in recipe} if recipe else None,
        },
        "proof": proof(ds, position, row),
        "prov": row_prov(row, ds.record),
    }


def _recipe(ds: Committed, sha: str) -> dict[str, Any] | None:
    try:
        return ds.recipe(sha)
    except (FileNotFoundError, ValueError):  # gone or altered: the chain says so
        return None


def _run(ds: Committed, row: dict[str, Any]) -> dict[str, Any]:
    """The run that made the row, from its version's record when that version is kept."""
    made = next(
        (v for v in versions.all_versions(ds.fs, ds.root) if v.run_id == row["run_id"]), None
    )
    run = {"run_id": row["run_id"], "code_version": row["code_version"]}
    if made is None:
        return {**run, "version": None, "note": "that version's record is no longer kept"}
    record = json.loads(ds.fs.cat_file(layout.join(ds.root, made.run_record)))
    return {
        **run,
        "version": made.version,
        "record": made.run_record,
        "started_at": record.get("started_at"),
        "weights": (record.get("weights") or {}).get(row["inpainter"]),
        "packages": {
            k: v
            for k, v in record.get("environment", {}).get("packages", {}).items()
            if k in ("torch", "numpy", "opencv-python-headless", "pillow", "albumentations")
        },
    }


def proof(ds: Committed, position: int, row: dict[str, Any]) -> dict[str, Any] | None:
    """The row's Merkle inclusion proof against the run record's root, verified."""
    integrity = ds.record.get("integrity")
    if not integrity:
        return None
    columns = ["output_uri", "output_sha256", "mask_uri", "mask_sha256"]
    count = integrity["leaves"]
    path = inclusion_proof(iter_leaves(ds.rows(columns), ds.written_root), position, count)
    leaf = leaf_hash(leaf_data(ds.written_root, *(row[c] for c in columns)))
    return {
        "leaf_index": position,
        "leaves": count,
        "root": integrity["merkle_root"],
        "path": path,
        "verified": verify_inclusion(leaf, position, count, path, integrity["merkle_root"]),
    }
