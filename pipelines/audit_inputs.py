"""The audit's checks of what went into a dataset: model weights and sources.

Weights are found through the run records (the recipe leaves out where weights live, so a
moved file keeps its fingerprint) and must still hash to every row's ``weights_sha256``.
Sources are re-hashed against ``source_sha256``; a changed or deleted source is drift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec

from inpaint_ops.weights import WeightsError
from pipelines import layout, versions
from pipelines.audit import AuditReport, Committed, Finding
from pipelines.errors import RunError
from pipelines.manifest import Manifest
from pipelines.sources import filesystem
from pipelines.weights import fetch_weights


@dataclass(frozen=True)
class Access:
    """Storage options for reading sources and weights (from a manifest, else the environment)."""

    source: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # by inpainter label

    @classmethod
    def of(cls, manifest: Manifest | None) -> Access:
        if manifest is None:
            return cls()
        weights = {s.label: dict(getattr(s, "storage_options", {})) for s in manifest.inpainters}
        return cls(dict(manifest.source.storage_options), weights)


def weights_locations(ds: Committed) -> dict[tuple[str, str], str]:
    """(inpainter label, sha256) -> the weights URI, from every kept version's run record."""
    found: dict[tuple[str, str], str] = {}
    for version in [*versions.all_versions(ds.fs, ds.root), ds.version]:
        try:
            record = json.loads(ds.fs.cat_file(layout.join(ds.root, version.run_record)))
        except FileNotFoundError:
            continue
        for label, weights in (record.get("weights") or {}).items():
            found[(label, weights["sha256"])] = weights["uri"]
    return found


def check_weights(ds: Committed, report: AuditReport, access: Access) -> dict[str, Any]:
    pairs: set[tuple[str, str]] = set()
    for table in ds.rows(["inpainter", "weights_sha256"]):
        for label, sha in zip(*(c.to_pylist() for c in table.columns), strict=True):
            if sha is not None:
                pairs.add((label, sha))
    if not pairs:
        return {"status": "pass", "weights": 0, "note": "classical fills only"}
    where = weights_locations(ds)
    bad = 0
    for label, sha in sorted(pairs):
        uri = where.get((label, sha))
        try:
            if uri is None:
                raise WeightsError("no kept run record says where these weights live")
            fetch_weights(uri, access.weights.get(label, {}), expected_sha256=sha)
        except (WeightsError, RunError, OSError) as exc:
            bad += 1
            report.add(Finding("weights", "fail", f"{label} {sha[:12]}", str(exc)))
    return {"status": "fail" if bad else "pass", "weights": len(pairs), "bad": bad}


def check_sources(
    ds: Committed,
    report: AuditReport,
    access: Access,
    threads: int,
    tick: Callable[[str, int, int], None],
) -> dict[str, Any]:
    """Re-hash each distinct source; differences are drift, never failure."""
    if ds.record.get("recipe", {}).get("source", {}).get("pseudonymize"):
        report.add(Finding("sources", "note", "source", _PSEUDONYMOUS))
        return {"status": "skipped"}
    recorded: dict[str, str] = {}
    for table in ds.rows(["source_uri", "source_sha256"]):
        recorded.update(zip(*(c.to_pylist() for c in table.columns), strict=True))
    opener = _Opener(access.source)
    changed = gone = done = 0
    with ThreadPoolExecutor(threads) as pool:
        for uri, found in zip(recorded, pool.map(opener.sha256, recorded), strict=True):
            done += 1
            if found is None:
                gone += 1
                report.add(Finding("sources", "drift", uri, "no longer exists"))
            elif found != recorded[uri]:
                changed += 1
                report.add(Finding("sources", "drift", uri, f"changed: sha256 now {found[:16]}…"))
            tick("sources", done, len(recorded))
    status = "drift" if changed or gone else "pass"
    return {"status": status, "sources": len(recorded), "changed": changed, "gone": gone}


_PSEUDONYMOUS = (
    "the sources are pseudonymized: their real keys are in no row, so they are not re-read"
)


class _Opener:
    """Filesystems for source URIs, one per protocol and bucket."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.filesystems: dict[str, fsspec.AbstractFileSystem] = {}

    def sha256(self, uri: str) -> str | None:
        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        bucket = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""
        fs = self.filesystems.get(f"{scheme}://{bucket}")
        if fs is None:
            fs, _ = filesystem(uri, self.options)
            self.filesystems[f"{scheme}://{bucket}"] = fs
        digest = hashlib.sha256()
        try:
            with fs.open(fs._strip_protocol(uri), "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except FileNotFoundError:
            return None
        return digest.hexdigest()
