"""Making one index row again from the row alone, and comparing.

A row names everything that made it: the recipe by ``manifest_sha256`` (stored in the dataset
as ``recipes/<sha256>.json``), the source by URI and ``source_sha256``, its annotations
(``source_boxes``/``source_labels``), its seed, and the weights by ``weights_sha256``. The same
worker code that made the row (``ItemProcessor``) runs again on one item into a scratch folder.

CPU fills must match bit for bit. Rows filled on a GPU (``inpaint_device`` cuda) may differ in
the last bits between devices and kernels: they pass when the mask is identical and the image
is within ``GPU_MIN_PSNR_DB`` of the original.

Outputs signed with C2PA (``output.c2pa``) carry fresh claim ids, so their bytes differ between
builds by design. They are remade unsigned (an auditor needs no signing key) and compared by
decoded pixels, and the stored file's manifest must validate and name the row's recipe, source
and seed: the manifest's hash binding covers every byte of the file outside it.
"""

from __future__ import annotations

import copy
import json
import tempfile
from typing import Any

import numpy as np

from pipelines.audit import AuditReport, Committed, Finding, subject
from pipelines.audit_inputs import Access, weights_locations
from pipelines.codec import decode_image
from pipelines.manifest import Manifest
from pipelines.process import ItemProcessor, RunPlan

GPU_MIN_PSNR_DB = 40.0  # the stated tolerance for GPU fills made again (on any device)
COMPARED = ("output_sha256", "mask_sha256", "seed", "source_sha256", "mask_fraction")
COMPARED += ("boxes", "labels", "removed_boxes", "augment_params", "output_width")


def reproduce_rows(
    ds: Committed, report: AuditReport, positions: list[int], access: Access, device: str
) -> dict[str, Any]:
    """Make the rows at ``positions`` (in index order) again and compare."""
    outcomes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="synthfill-reproduce-") as scratch:
        for row in _rows_at(ds, positions):
            outcome, detail = reproduce_row(ds, row, access, device, scratch)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            severity = {"identical": None, "within_tolerance": "note", "source_changed": "drift"}
            level = severity.get(outcome, "fail")
            if level is not None:
                report.add(Finding("reproduce", level, subject(row), f"{outcome}: {detail}"))
    failed = sum(n for k, n in outcomes.items() if k not in _PASSING)
    made = sum(n for k, n in outcomes.items() if k in ("identical", "within_tolerance"))
    status = "fail" if failed or not made else "pass"
    return {"status": status, "rows": len(positions), "positions": positions, **outcomes}


_PASSING = ("identical", "within_tolerance", "source_changed")


def _rows_at(ds: Committed, positions: list[int]) -> list[dict[str, Any]]:
    wanted, found, offset = set(positions), [], 0
    for table in ds.rows(None):  # every column
        for i in sorted(p - offset for p in wanted if offset <= p < offset + table.num_rows):
            found.append(table.slice(i, 1).to_pylist()[0])
        offset += table.num_rows
    return found


def reproduce_row(
    ds: Committed, row: dict[str, Any], access: Access, device: str, scratch: str
) -> tuple[str, str]:
    """(outcome, detail): identical | within_tolerance | mismatch | source_changed | error."""
    try:
        manifest, plan = rebuild_plan(ds, row, access, scratch)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        return "error", f"cannot rebuild the recipe: {exc}"
    if manifest.source.pseudonymize:
        return "error", "pseudonymized source: its real key is in no row"
    item = {
        "image_id": row["image_id"],
        "uri": row["source_uri"],
        "boxes": row["source_boxes"] or [],
        "labels": row["source_labels"] or [],
    }
    again = ItemProcessor(plan, device=device).process([item])
    match = [
        r
        for r in again
        if r.get("variant") == row["variant"] and r.get("inpainter") == row["inpainter"]
    ]
    if not match:
        made = again[0] if again else {}
        if made.get("source_sha256") not in (None, row["source_sha256"]):
            return "source_changed", f"{row['source_uri']} has other bytes now"
        return "error", f"made no such row: {made.get('reason')} {made.get('error')}"
    return _compare(ds, row, match[0], scratch, signed=_signed(ds, row))


def _signed(ds: Committed, row: dict[str, Any]) -> bool:
    return ds.recipe(row["manifest_sha256"])["output"].get("c2pa") is not None


def rebuild_plan(
    ds: Committed, row: dict[str, Any], access: Access, scratch: str
) -> tuple[Manifest, RunPlan]:
    """The manifest and plan that make ``row`` again: its recipe, with only the row's
    inpainter (seeds do not depend on the others), plus where the inputs live now."""
    sha = row["manifest_sha256"]
    recipe = ds.recipe(sha)
    recipe["output"].pop("c2pa", None)  # remade unsigned: compared by pixels (see the top)
    listed = recipe["inpainter"] if isinstance(recipe["inpainter"], list) else [recipe["inpainter"]]
    own = [spec for spec in listed if (spec.get("name") or spec["kind"]) == row["inpainter"]]
    if len(own) != 1:
        raise ValueError(f"the recipe has no inpainter labelled {row['inpainter']!r}")
    spec = copy.deepcopy({**recipe, "inpainter": own[0]})
    spec["source"].update(uri=row["source_uri"][: -len(row["image_id"])].rstrip("/"))
    spec["source"]["storage_options"] = access.source
    spec["masks"] = json.loads(row["mask_params"])  # the generators in full (their uris too)
    spec["output"].update(uri=scratch)
    weights = {}
    if row["weights_sha256"] is not None:
        spec["inpainter"]["weights"] = weights_locations(ds)[
            (row["inpainter"], row["weights_sha256"])
        ]
        spec["inpainter"]["storage_options"] = access.weights.get(row["inpainter"], {})
        weights[row["inpainter"]] = row["weights_sha256"]
    manifest = Manifest.model_validate(spec)
    if manifest.recipe() != {**recipe, "inpainter": own[0]}:
        raise ValueError("this code reads the recipe differently from the code that made it")
    # Keys and embedded metadata name the original recipe (several inpainters: labelled keys).
    plan = RunPlan(manifest, sha, row["run_id"], row["code_version"], weights)
    return manifest, plan


def _compare(
    ds: Committed, row: dict[str, Any], again: dict[str, Any], scratch: str, signed: bool
) -> tuple[str, str]:
    differ = [name for name in COMPARED if again.get(name) != row.get(name)]
    gpu = str(row.get("inpaint_device") or "").startswith("cuda")
    if not signed and not differ:
        return "identical", "every compared field and both hashes equal"
    if [name for name in differ if name != "output_sha256"]:
        shown = ", ".join(f"{n}: {row.get(n)!r} -> {again.get(n)!r}" for n in differ[:3])
        return "mismatch", shown
    if not (gpu or signed):
        return "mismatch", f"output_sha256: {row['output_sha256']} -> {again['output_sha256']}"
    stored = ds.file(row["output_uri"])
    credentials = ""
    if signed:
        problem = _credentials_problem(stored, row)
        if problem:
            return "mismatch", problem
        credentials = "; its C2PA manifest validates and names this row"
    psnr = _psnr(decode_image(stored), decode_image(_scratch_bytes(again["output_uri"], scratch)))
    if psnr == float("inf"):
        return "identical", "every compared field and the decoded pixels equal" + credentials
    if gpu and psnr >= GPU_MIN_PSNR_DB:
        return (
            "within_tolerance",
            f"GPU fill, PSNR {psnr:.1f} dB >= {GPU_MIN_PSNR_DB}" + credentials,
        )
    return "mismatch", f"{'GPU' if gpu else 'CPU'} fill, PSNR {psnr:.1f} dB" + credentials


def _credentials_problem(data: bytes, row: dict[str, Any]) -> str | None:
    from pipelines.c2pa_credentials import verify

    fmt = row["output_uri"].rsplit(".", 1)[-1].replace("jpg", "jpeg")
    verdict = verify(data, fmt)
    if not verdict.ok:
        return f"the stored output's {verdict.describe()}"
    said = verdict.provenance or {}
    wrong = [
        k for k in ("manifest_sha256", "source_sha256", "seed", "variant") if said.get(k) != row[k]
    ]
    if wrong:
        return f"its C2PA manifest names another {', '.join(wrong)}"
    return None


def _scratch_bytes(uri: str, scratch: str) -> bytes:
    path = uri.split("://", 1)[-1]
    with open(path if path.startswith(scratch) else scratch + "/" + path, "rb") as handle:
        return handle.read()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 0.0
    peak = 65535.0 if a.dtype == np.uint16 else 255.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)
