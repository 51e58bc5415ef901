"""A manifest's items run in this process: the worker's own code (ItemProcessor), without Ray.

Planning and processing are separate calls, so a test can change the world between them (an
object replaced after it was listed) and see exactly what a worker would make of it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.manifest_loader import LoadedManifest, load_manifest
from pipelines.planning import plan_run, work_items
from pipelines.process import ItemProcessor, RunPlan


def load(path: Path, *overrides: str) -> LoadedManifest:
    return load_manifest(path, list(overrides))


def plan_items(loaded: LoadedManifest) -> list[dict[str, Any]]:
    """The work payload of every listed item (what the driver sends to workers)."""
    return work_items(plan_run(loaded))


def processor(loaded: LoadedManifest, run_id: str = "matrix-run") -> ItemProcessor:
    """A fresh worker for the manifest (inpainters loaded, filesystems opened)."""
    return ItemProcessor(RunPlan(loaded.manifest, loaded.fingerprint, run_id, "test"))


def process(path: Path, *overrides: str) -> list[dict[str, Any]]:
    """Plan and process every item of the manifest at ``path``; the rows."""
    loaded = load(path, *overrides)
    return processor(loaded).process(plan_items(loaded))


def conservation(rows: list[dict[str, Any]], items_in: int, variants: int) -> dict[str, int]:
    """The matrix's conservation figures for one batch of rows (asserts the identity holds)."""
    ok = [r for r in rows if r["status"] == "ok"]
    quarantined = [r for r in rows if r["status"] == "quarantined"]
    keys = Counter((r["image_id"], r["variant"]) for r in ok)
    figures = {
        "items_in": items_in,
        "items_ok": len({r["image_id"] for r in ok}),
        "items_quarantined": len(quarantined),
        "duplicates": sum(n - 1 for n in keys.values()),
        "canary_hits": 0,
    }
    assert len(ok) == figures["items_ok"] * variants, "an ok item lacks some of its variants"
    assert figures["items_ok"] + figures["items_quarantined"] == items_in, figures
    assert figures["duplicates"] == 0
    return figures


def reasons(rows: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["reason"] for r in rows if r["status"] == "quarantined"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
