"""``pipeline evaluate``: how good the fills of a committed version are, row by row and overall.

Per row, against the source the row names (read again, and checked against its sha256):

- ``masked_psnr`` / ``masked_ssim``: the hole, which covered real content, against that content;
- ``leak_mean``: mean absolute change outside the hole, in 8-bit grey levels (encoding loss and
  anything the composite let through);
- ``seam``: how visible the hole's boundary is (``inpaint_ops.metrics.seam_score``; ~1 is no
  seam);
- ``blank``: the output, or the fill, is one flat value (a tripped safety filter, a dead model).

Per source and inpainter: ``diversity`` = 1 - mean pairwise MS-SSIM of its variants (0: the
variants are the same image). Per dataset and inpainter, with a feature extractor the user
supplies (TorchScript; none is downloaded): FID, KID and P-IDS/U-IDS of outputs against their
sources. Everything is also reported per mask-area bin (0-10%, 10-20%, ...), as LaMa reports.

Rows whose source was augmented (geometry or colour), pseudonymized or changed since are not
compared with it (their source metrics are null, ``compared`` false); seam, blank and diversity
still apply. QC gates (``qc:`` in the manifest, or options) mark failing rows
``status = rejected`` with a reason in the metrics; the index itself never changes.

Written beside the version: ``versions/<N>-<run_id>/evaluation/metrics.parquet`` and
``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inpaint_ops.metrics import (
    area_bin,
    is_blank,
    masked_psnr,
    masked_ssim,
    mean_pairwise_ms_ssim,
    seam_score,
)
from pipelines import layout
from pipelines.audit import Committed, open_committed
from pipelines.audit_inputs import Access
from pipelines.codec import decode_image, decode_mask
from pipelines.dicom import DicomSpec
from pipelines.errors import ItemError, RunError
from pipelines.manifest import Manifest, OutputSpec, QcSpec
from pipelines.sources import read_bytes
from pipelines.storage import publish_bytes

EVALUATION = "evaluation"
METRICS = "metrics.parquet"
SUMMARY = "summary.json"
ROW_COLUMNS = ["image_id", "variant", "inpainter", "split", "source_uri", "source_sha256"]
ROW_COLUMNS += ["output_uri", "mask_uri", "mask_fraction", "augment_params", "fill_blank"]
ROW_COLUMNS += ["manifest_sha256"]
METRICS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("variant", pa.int32()),
        ("inpainter", pa.string()),
        ("split", pa.string()),
        ("mask_fraction", pa.float64()),
        ("area_bin", pa.string()),
        ("compared", pa.bool_()),
        ("masked_psnr", pa.float64()),
        ("masked_ssim", pa.float64()),
        ("leak_mean", pa.float64()),
        ("seam", pa.float64()),
        ("blank", pa.bool_()),
        ("diversity", pa.float64()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)
Progress = Callable[[int, int], None]
# inpainter -> (area bin, source features, output features) per row
Features = dict[str, list[tuple[str, np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class Evaluation:
    dataset: str
    version: int
    run_id: str
    summary: dict[str, Any]
    metrics_uri: str
    summary_uri: str


def evaluate_dataset(
    output: OutputSpec,
    manifest: Manifest | None = None,
    *,
    extractor: Any | None = None,
    gates: QcSpec | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Evaluate the latest committed version of ``output`` and write the metrics beside it.

    ``extractor`` (an ``inpaint_ops.distribution.FeatureExtractor``) adds FID, KID and
    P-IDS/U-IDS; ``gates`` default to the manifest's ``qc`` section; ``limit`` evaluates only
    the first sources of the index (a quick look at a large dataset).
    """
    ds = open_committed(output)
    gates = gates or (manifest.qc if manifest is not None else None) or QcSpec()
    access, recipes = Access.of(manifest), Recipes(ds)
    rows: list[dict[str, Any]] = []
    features: Features = {}
    total = int((ds.record.get("integrity") or {}).get("leaves") or 0)
    for group in islice(source_groups(ds), limit):
        source, note = source_image(group[0], access, recipes)
        made = [_row_metrics(ds, row, source, note) for row in group]
        _diversity(made)
        if extractor is not None and source is not None:
            _add_features(extractor, source, made, features)
        for m in made:
            m.pop("_image")
            m["status"], m["reason"] = _judge(m, gates)
        rows.extend(made)
        if progress:
            progress(len(rows), total)
    table = pa.Table.from_pylist(rows, schema=METRICS_SCHEMA)
    summary = {**_summary(ds, table, features, extractor, gates), "limit": limit}
    return _write(ds, table, summary)


def source_groups(ds: Committed) -> Iterator[list[dict[str, Any]]]:
    """Index rows, one source at a time (an item's rows are written together)."""
    group: list[dict[str, Any]] = []
    for table in ds.rows(ROW_COLUMNS):
        for row in table.to_pylist():
            if group and row["image_id"] != group[0]["image_id"]:
                yield group
                group = []
            group.append(row)
    if group:
        yield group


class Recipes:
    """Each row's recipe (see ``Committed.recipe``), read once."""

    def __init__(self, ds: Committed) -> None:
        self.ds = ds
        self.found: dict[str, dict[str, Any]] = {}

    def __call__(self, sha: str) -> dict[str, Any]:
        if sha not in self.found:
            self.found[sha] = self.ds.recipe(sha)
        return self.found[sha]


def source_image(
    row: dict[str, Any], access: Access, recipes: Recipes
) -> tuple[np.ndarray | None, str | None]:
    """The source as the run decoded it, or None and why it cannot be compared."""
    recipe = recipes(row["manifest_sha256"])
    if recipe["source"].get("pseudonymize"):
        return None, "pseudonymized source"
    try:
        data = read_bytes(row["source_uri"], access.source)
    except (OSError, ValueError, ItemError) as exc:  # gone, refused: evaluated without it
        return None, f"source unreadable: {type(exc).__name__}"
    if hashlib.sha256(data).hexdigest() != row["source_sha256"]:
        return None, "source changed since the run"
    dicom = recipe["source"].get("dicom")
    max_pixels = recipe["source"].get("max_pixels") or 10**12
    spec = DicomSpec.model_validate(dicom) if dicom else None
    return decode_image(data, max_pixels=max_pixels, dicom=spec), None


def _row_metrics(
    ds: Committed, row: dict[str, Any], source: np.ndarray | None, note: str | None
) -> dict[str, Any]:
    image = decode_image(row_file(ds, row["output_uri"]))
    mask = decode_mask(row_file(ds, row["mask_uri"]))
    augmented = row["augment_params"] not in (None, "[]", "{}")
    compared = source is not None and not augmented and source.shape == image.shape and mask.any()
    found = {
        "image_id": row["image_id"],
        "variant": row["variant"],
        "inpainter": row["inpainter"],
        "split": row["split"],
        "mask_fraction": row["mask_fraction"],
        "area_bin": area_bin(row["mask_fraction"]),
        "compared": compared,
        "masked_psnr": masked_psnr(source, image, mask) if compared else None,
        "masked_ssim": masked_ssim(source, image, mask) if compared else None,
        "leak_mean": _leak_mean(source, image, mask) if compared else None,
        "seam": _finite(seam_score(image, mask)),
        "blank": bool(is_blank(image) or row["fill_blank"]),
        "_image": image,
    }
    if not compared and note is None and augmented:
        note = "augmented output"
    found["_note"] = note
    return found


def row_file(ds: Committed, uri: str) -> bytes:
    try:
        return ds.file(uri)
    except FileNotFoundError:
        raise RunError(
            f"{uri} is missing: the version is damaged (`pipeline audit` lists every bad file)"
        ) from None


def _leak_mean(source: np.ndarray, image: np.ndarray, mask: np.ndarray) -> float | None:
    outside = ~mask
    if not outside.any():
        return None
    diff = np.abs(source.astype(np.float64) - image.astype(np.float64))[outside]
    scale = 257.0 if source.dtype == np.uint16 else 1.0
    return float(diff.mean() / scale)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _diversity(made: list[dict[str, Any]]) -> None:
    """1 - mean pairwise MS-SSIM of each inpainter's variants of this source."""
    for label in {m["inpainter"] for m in made}:
        own = [m for m in made if m["inpainter"] == label]
        images = [m["_image"] for m in own]
        same = len({i.shape for i in images}) == 1 and len(images) > 1
        value = 1.0 - mean_pairwise_ms_ssim(images) if same else None
        for m in own:
            m["diversity"] = _finite(value) if value is not None else None


def _add_features(
    extractor: Any,
    source: np.ndarray,
    made: list[dict[str, Any]],
    found: Features,
) -> None:
    """(source features, output features) pairs per inpainter, for FID, KID and P-/U-IDS."""
    vectors = extractor.features([source] + [m["_image"] for m in made])
    for m, vector in zip(made, vectors[1:], strict=True):
        found.setdefault(m["inpainter"], []).append((m["area_bin"], vectors[0], vector))


def _judge(m: dict[str, Any], gates: QcSpec) -> tuple[str, str | None]:
    """``ok``, or ``rejected`` and the first gate the row fails."""
    checks = [
        (gates.reject_blank and m["blank"], "blank output"),
        (_over(m["leak_mean"], gates.max_leak), f"leak_mean {m['leak_mean']} > {gates.max_leak}"),
        (_over(m["seam"], gates.max_seam), f"seam {m['seam']} > {gates.max_seam}"),
        (
            _under(m["masked_psnr"], gates.min_masked_psnr),
            f"masked_psnr {m['masked_psnr']} < {gates.min_masked_psnr}",
        ),
        (
            _under(m["diversity"], gates.min_diversity),
            f"diversity {m['diversity']} < {gates.min_diversity}",
        ),
    ]
    note = m.pop("_note", None)
    for failed, reason in checks:
        if failed:
            return "rejected", reason
    return "ok", note


def _over(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value > limit


def _under(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value < limit


def _summary(
    ds: Committed,
    table: pa.Table,
    features: Features,
    extractor: Any | None,
    gates: QcSpec,
) -> dict[str, Any]:
    from pipelines.evaluate_summary import summarize

    return summarize(ds, table, features, extractor, gates)


def _write(ds: Committed, table: pa.Table, summary: dict[str, Any]) -> Evaluation:
    folder = layout.join(ds.root, ds.version.folder + "/" + EVALUATION)
    ds.fs.makedirs(folder, exist_ok=True)
    metrics_path, summary_path = layout.join(folder, METRICS), layout.join(folder, SUMMARY)
    with ds.fs.open(metrics_path, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")
    publish_bytes(ds.fs, summary_path, json.dumps(summary, indent=2).encode())
    return Evaluation(
        dataset=ds.fs.unstrip_protocol(ds.root),
        version=ds.version.version,
        run_id=ds.record["run_id"],
        summary=summary,
        metrics_uri=ds.fs.unstrip_protocol(metrics_path),
        summary_uri=ds.fs.unstrip_protocol(summary_path),
    )
