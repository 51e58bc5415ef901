"""The evaluation's summary: per inpainter, overall and per mask-area bin (see evaluate.py).

Means are over the rows a metric applies to (``n`` says how many); a masked PSNR of infinity (the
fill reproduced the hidden content exactly) is counted in ``identical`` and left out of the
mean. Distribution metrics need features (``--features``) and at least two rows in the group;
with few rows they are noisy, which ``n`` makes plain.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from inpaint_ops.distribution import (
    frechet_distance,
    kernel_inception_distance,
    paired_unpaired_ids,
)
from pipelines.audit import Committed
from pipelines.manifest import QcSpec

MEANS = ("masked_psnr", "masked_ssim", "leak_mean", "seam", "diversity")
MIN_ROWS_FOR_IDS = 4  # a classifier fit on fewer pairs says nothing


def summarize(
    ds: Committed, table: pa.Table, features: dict[str, list], extractor: Any | None, gates: QcSpec
) -> dict[str, Any]:
    rows = table.to_pylist()
    rejected = Counter(r["reason"] for r in rows if r["status"] == "rejected")
    by_inpainter = {}
    for label in sorted({r["inpainter"] for r in rows}):
        own = [r for r in rows if r["inpainter"] == label]
        pairs = features.get(label, [])
        by_inpainter[label] = {
            **_figures(own, pairs),
            "bins": {
                name: _figures(
                    [r for r in own if r["area_bin"] == name],
                    [p for p in pairs if p[0] == name],
                )
                for name in sorted({r["area_bin"] for r in own}, key=_bin_start)
            },
        }
    return {
        "dataset": ds.fs.unstrip_protocol(ds.root),
        "version": ds.version.version,
        "run_id": ds.record["run_id"],
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "rejected": sum(rejected.values()),
        "rejected_by_reason": dict(rejected.most_common()),
        "gates": gates.model_dump(),
        "features": _extractor(extractor),
        "by_inpainter": by_inpainter,
    }


def _figures(rows: list[dict[str, Any]], pairs: list) -> dict[str, Any]:
    found: dict[str, Any] = {"rows": len(rows), "compared": sum(r["compared"] for r in rows)}
    for name in MEANS:
        values = [r[name] for r in rows if r[name] is not None and not math.isinf(r[name])]
        found[name] = round(float(np.mean(values)), 6) if values else None
    found["identical"] = sum(r["masked_psnr"] == math.inf for r in rows)
    found["blank"] = sum(bool(r["blank"]) for r in rows)
    found["rejected"] = sum(r["status"] == "rejected" for r in rows)
    found.update(_distribution(pairs))
    return found


def _distribution(pairs: list) -> dict[str, Any]:
    if len(pairs) < 2:
        return {}
    real = np.stack([p[1] for p in pairs])
    fake = np.stack([p[2] for p in pairs])
    kid, kid_std = kernel_inception_distance(real, fake)
    found = {
        "fid": round(frechet_distance(real, fake), 6),
        "kid": round(kid, 6),
        "kid_std": round(kid_std, 6),
        "feature_rows": len(pairs),
    }
    if len(pairs) >= MIN_ROWS_FOR_IDS:
        p_ids, u_ids = paired_unpaired_ids(real, fake)
        found.update(p_ids=round(p_ids, 6), u_ids=round(u_ids, 6))
    return found


def _extractor(extractor: Any | None) -> dict[str, Any] | None:
    if extractor is None:
        return None
    return {
        "sha256": extractor.sha256,
        "input_size": extractor.input_size,
    }


def _bin_start(name: str) -> int:
    return int(name.split("-", 1)[0])
