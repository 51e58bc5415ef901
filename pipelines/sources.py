"""Sources over fsspec: a sorted, stable listing and annotations joined by ``image_id``."""

from __future__ import annotations

import glob
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd

from pipelines import credentials
from pipelines.errors import RunError
from pipelines.manifest import SourceSpec

SKU110K_COLUMNS = ("image_name", "x1", "y1", "x2", "y2", "class", "image_width", "image_height")


@dataclass(frozen=True)
class SourceItem:
    """One source image: a stable id (path relative to the source root) and where to read it."""

    image_id: str
    uri: str
    size: int


@dataclass(frozen=True)
class Annotations:
    """Boxes of one image: float ``(N, 4)`` x1, y1, x2, y2 in pixels, with a label each."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: tuple[str, ...] = ()


def filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (RunError when unavailable).

    ``${NAME}`` references in ``storage_options`` are resolved from this process's environment
    here, at the last moment, so the resolved secrets live only inside the filesystem object.
    """
    options = credentials.resolve(storage_options, os.environ)
    try:
        return fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:  # e.g. gcsfs or adlfs not installed
        raise RunError(f"cannot open {uri!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RunError(
            f"cannot open {uri!r} with storage_options {sorted(storage_options)}: {exc}"
        ) from None


def list_sources(spec: SourceSpec) -> list[SourceItem]:
    """List the images under ``spec.uri`` matching the glob and extensions, sorted by image_id."""
    fs, root = filesystem(spec.uri, spec.storage_options)
    root = root.rstrip("/")
    try:
        if not fs.isdir(root):
            raise RunError(f"source.uri {spec.uri!r} is not a readable folder")
        # The root is literal: brackets or stars in a folder name are not a pattern.
        found = fs.glob(posixpath.join(glob.escape(root), spec.glob), detail=True)
    except (OSError, PermissionError) as exc:
        raise RunError(f"cannot list source.uri {spec.uri!r}: {exc}") from exc
    items = []
    for path, info in found.items():
        if info.get("type") == "directory" or not path.lower().endswith(spec.extensions):
            continue
        image_id = posixpath.relpath(path, root)
        items.append(SourceItem(image_id, fs.unstrip_protocol(path), int(info.get("size") or 0)))
    return sorted(items, key=lambda item: item.image_id)


def read_bytes(uri: str, storage_options: dict[str, Any]) -> bytes:
    """Read a whole object; errors propagate to the caller's guard."""
    fs, path = filesystem(uri, storage_options)
    return fs.cat_file(path)


def load_annotations(uri: str, storage_options: dict[str, Any]) -> dict[str, Annotations]:
    """Boxes per image_id from COCO JSON, SKU-110K CSV or Parquet (by extension)."""
    fs, path = filesystem(uri, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise RunError(f"cannot read source.annotations {uri!r}: {exc}") from exc
    lower = path.lower()
    try:
        if lower.endswith(".json"):
            return _from_coco(json.loads(data), uri)
        if lower.endswith(".csv"):
            return _from_table(pd.read_csv(io.BytesIO(data)), uri)
        if lower.endswith(".parquet"):
            return _from_table(pd.read_parquet(io.BytesIO(data)), uri)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # malformed JSON / CSV / Parquet
        raise RunError(f"cannot parse source.annotations {uri!r}: {exc}") from None
    raise RunError(f"source.annotations {uri!r}: expected a .json (COCO), .csv or .parquet file")


def _from_table(frame: pd.DataFrame, uri: str) -> dict[str, Annotations]:
    missing = [c for c in SKU110K_COLUMNS[:6] if c not in frame.columns]
    if missing:
        raise RunError(
            f"{uri}: missing SKU-110K columns {missing}; expected {list(SKU110K_COLUMNS)}"
        )
    out: dict[str, Annotations] = {}
    for name, group in frame.groupby("image_name", sort=True):
        boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64)
        out[str(name)] = Annotations(boxes, tuple(str(c) for c in group["class"]))
    return out


def _from_coco(doc: dict[str, Any], uri: str) -> dict[str, Annotations]:
    try:
        names = {img["id"]: img["file_name"] for img in doc["images"]}
        categories = {c["id"]: c["name"] for c in doc.get("categories", [])}
        rows: dict[str, list[tuple[list[float], str]]] = {name: [] for name in names.values()}
        for ann in doc.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])
            label = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            rows[names[ann["image_id"]]].append(([x, y, x + w, y + h], label))
    except (KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{uri}: not a COCO detection file ({exc!r})") from exc
    return {
        name: Annotations(
            np.array([b for b, _ in r], dtype=np.float64).reshape(-1, 4), tuple(lbl for _, lbl in r)
        )
        for name, r in sorted(rows.items())
    }
