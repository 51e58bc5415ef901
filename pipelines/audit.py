"""``pipeline audit``: prove that a committed version is what its records say it is.

Checks, in order (each reports pass / fail / drift / skipped with its figures):

- ``signature``: the run record's Ed25519 signature, when it is signed (``output.sign_record``).
- ``record``: the index and quarantine files hash to what the run record says.
- ``merkle``: the Merkle root over the index's (key, sha256) leaves equals the record's.
- ``files``: every output and mask is re-read and re-hashed against its index row.
- ``recipes``: every row's ``manifest_sha256`` resolves to ``recipes/<sha256>.json``, which
  hashes to its name.
- ``weights``: the model weights behind every ``weights_sha256`` still hash to it.
- ``sources``: the sources still have the recorded hashes. A changed or deleted source is
  *drift* (the dataset is still what it was; it could no longer be made again), not failure.
- ``reproduce``: N random rows are made again from their index rows alone (see reproduce.py).

The audit reads only; it fails (``passed`` False) on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pyarrow as pa

from pipelines import layout, versions
from pipelines.errors import RunError
from pipelines.integrity import MerkleTree
from pipelines.manifest import Manifest, OutputSpec
from pipelines.sources import filesystem

Progress = Callable[[str, int, int], None]  # (check, done, total)
FILE_COLUMNS = ["image_id", "variant", "inpainter", "output_uri", "output_sha256"]
FILE_COLUMNS += ["mask_uri", "mask_sha256"]
_MAX_FINDINGS = 200  # per check: a dataset of rotten files should not print a million lines


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str  # fail | drift | note
    subject: str  # the row (image_id vN [inpainter]), key or URI concerned
    detail: str


@dataclass
class AuditReport:
    dataset: str
    version: int
    run_id: str
    rows: int
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c["status"] != "fail" for c in self.checks.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def add(self, finding: Finding) -> None:
        shown = sum(1 for f in self.findings if f.check == finding.check)
        if shown < _MAX_FINDINGS:
            self.findings.append(finding)


@dataclass(frozen=True)
class Committed:
    """The latest committed version of a dataset, opened for reading."""

    fs: fsspec.AbstractFileSystem
    root: str
    uri: str
    version: versions.Version
    record: dict[str, Any]

    @property
    def written_root(self) -> str:
        """The URI the dataset was written at: row URIs start with it (it may have moved)."""
        return (self.record.get("integrity") or {}).get("root", self.uri)

    def key(self, uri: str) -> str:
        """A row's URI as a key relative to the dataset root."""
        prefix = self.written_root.rstrip("/") + "/"
        return uri[len(prefix) :] if uri.startswith(prefix) else uri

    def file(self, uri: str) -> bytes:
        """The bytes of a row's output or mask."""
        return self.fs.cat_file(layout.join(self.root, self.key(uri)))

    def recipe(self, manifest_sha256: str) -> dict[str, Any]:
        """The recipe a row names (``recipes/<sha256>.json``); ValueError when the file does not
        hash to its name, FileNotFoundError when it is gone."""
        data = self.fs.cat_file(layout.join(self.root, layout.recipe_key(manifest_sha256)))
        if hashlib.sha256(data).hexdigest() != manifest_sha256:
            raise ValueError(f"{layout.recipe_key(manifest_sha256)} does not hash to its name")
        return json.loads(data)

    def rows(self, columns: list[str] | None) -> Iterator[pa.Table]:
        """The index, a row group at a time, in file order."""
        path = layout.join(self.root, self.version.index)
        with self.fs.open(path, "rb") as handle, versions.parquet_file(handle) as parquet:
            for group in range(parquet.num_row_groups):
                yield parquet.read_row_group(group, columns=columns, use_threads=False)


def open_committed(output: OutputSpec) -> Committed:
    """The dataset's latest committed version and its run record (RunError when none)."""
    fs, root = filesystem(output.uri, output.storage_options)
    version, _ = versions.latest(fs, root)
    if version is None:
        raise RunError(f"{output.uri!r} holds no committed dataset (no _COMMITTED, no versions)")
    try:
        record = json.loads(fs.cat_file(layout.join(root, version.run_record)))
    except FileNotFoundError:
        raise RunError(f"version {version.version}'s run record is missing") from None
    return Committed(fs, root, fs.unstrip_protocol(root).rstrip("/"), version, record)


def subject(row: dict[str, Any]) -> str:
    """How findings name a row: ``image_id vN`` (plus the inpainter when several compare)."""
    return f"{row['image_id']} v{row['variant']} [{row['inpainter']}]"


def audit_dataset(
    output: OutputSpec,
    *,
    manifest: Manifest | None = None,
    reproduce: int = 0,
    seed: int | None = None,
    device: str = "cpu",
    threads: int = 16,
    trusted_key: bytes | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Run every check on the latest committed version of the dataset at ``output``.

    ``manifest`` (optional) only lends its storage options for reading sources and weights;
    what is checked comes from the dataset's own records.
    """
    from pipelines.audit_inputs import Access, check_sources, check_weights

    ds = open_committed(output)
    access = Access.of(manifest)
    report = AuditReport(output.uri, ds.version.version, ds.version.run_id, ds.version.rows)
    tick = progress or (lambda check, done, total: None)
    _timed(report, "signature", lambda: check_signature(ds, report, trusted_key))
    _timed(report, "record", lambda: check_record(ds, report))
    _timed(report, "merkle", lambda: check_merkle(ds, report))
    _timed(report, "files", lambda: check_files(ds, report, threads, tick))
    _timed(report, "recipes", lambda: check_recipes(ds, report))
    _timed(report, "weights", lambda: check_weights(ds, report, access))
    _timed(report, "sources", lambda: check_sources(ds, report, access, threads, tick))
    if reproduce:
        from pipelines.reproduce import reproduce_rows

        count = min(reproduce, ds.version.rows)
        chosen = sorted(random.Random(seed).sample(range(ds.version.rows), count))
        _timed(report, "reproduce", lambda: reproduce_rows(ds, report, chosen, access, device))
    return report


def _timed(report: AuditReport, name: str, check: Callable[[], dict[str, Any]]) -> None:
    start = time.perf_counter()
    figures = check()
    figures["seconds"] = round(time.perf_counter() - start, 3)
    report.checks[name] = figures


def check_signature(
    ds: Committed, report: AuditReport, trusted_pem: bytes | None
) -> dict[str, Any]:
    """The run record's Ed25519 signature (``output.sign_record``), when there is one."""
    from pipelines.signing import SIGNATURE_SUFFIX, verify

    path = layout.join(ds.root, ds.version.run_record)
    try:
        signature = ds.fs.cat_file(path + SIGNATURE_SUFFIX)
    except FileNotFoundError:
        if trusted_pem is None:
            return {"status": "skipped", "note": "the record is not signed"}
        report.add(Finding("signature", "fail", ds.version.run_record, "not signed"))
        return {"status": "fail"}
    problem = verify(ds.fs.cat_file(path), signature, trusted_pem)
    if problem is not None:
        report.add(Finding("signature", "fail", ds.version.run_record, problem))
        return {"status": "fail", "key_id": json.loads(signature).get("key_id")}
    trust = "trusted key" if trusted_pem is not None else "the key it names (none trusted given)"
    return {"status": "pass", "key_id": json.loads(signature)["key_id"], "under": trust}


def check_record(ds: Committed, report: AuditReport) -> dict[str, Any]:
    integrity = ds.record.get("integrity")
    if not integrity:
        report.add(Finding("record", "note", "run.json", _NO_INTEGRITY))
        return {"status": "skipped"}
    bad = 0
    for key, expected in integrity["files"].items():
        digest = _sha256(ds.fs, layout.join(ds.root, key))
        if digest != expected["sha256"]:
            bad += 1
            report.add(Finding("record", "fail", key, f"sha256 {digest} != recorded {expected}"))
    return {"status": "fail" if bad else "pass", "files": len(integrity["files"]), "bad": bad}


_NO_INTEGRITY = (
    "this version was committed before run records held integrity figures; "
    "the record and Merkle checks are skipped (every file is still re-hashed)"
)


def check_merkle(ds: Committed, report: AuditReport) -> dict[str, Any]:
    integrity = ds.record.get("integrity")
    if not integrity:
        return {"status": "skipped"}
    tree = MerkleTree()
    for table in ds.rows(["output_uri", "output_sha256", "mask_uri", "mask_sha256"]):
        tree.add_rows(table, ds.written_root)
    figures = {"leaves": tree.count, "root": tree.root(), "recorded": integrity["merkle_root"]}
    if tree.root() != integrity["merkle_root"] or tree.count != integrity["leaves"]:
        detail = f"root {tree.root()} over {tree.count} rows != recorded {integrity['merkle_root']}"
        report.add(Finding("merkle", "fail", ds.version.index, detail))
        return {"status": "fail", **figures}
    return {"status": "pass", **figures}


def check_files(ds: Committed, report: AuditReport, threads: int, tick: Progress) -> dict[str, Any]:
    """Re-hash every output and mask (``threads`` reads at a time)."""
    checked = bad = 0
    with ThreadPoolExecutor(threads) as pool:
        for table in ds.rows(FILE_COLUMNS):
            rows = table.to_pylist()
            for row, problems in zip(
                rows, pool.map(lambda r: _row_files(ds, r), rows), strict=True
            ):
                checked += 2
                for key, detail in problems:
                    bad += 1
                    report.add(Finding("files", "fail", subject(row), f"{key}: {detail}"))
            tick("files", checked, 2 * ds.version.rows)
    return {"status": "fail" if bad else "pass", "files": checked, "bad": bad}


def _row_files(ds: Committed, row: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for uri, expected in (
        (row["output_uri"], row["output_sha256"]),
        (row["mask_uri"], row["mask_sha256"]),
    ):
        key = ds.key(uri)
        try:
            digest = _sha256(ds.fs, layout.join(ds.root, key))
        except FileNotFoundError:
            problems.append((key, "missing"))
            continue
        if digest != expected:
            problems.append((key, f"sha256 {digest[:16]}… != index {expected[:16]}…"))
    return problems


def _sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_recipes(ds: Committed, report: AuditReport) -> dict[str, Any]:
    shas: set[str] = set()
    for table in ds.rows(["manifest_sha256"]):
        shas.update(table["manifest_sha256"].unique().to_pylist())
    bad = 0
    for sha in sorted(shas):
        key = layout.recipe_key(sha)
        try:
            found = _sha256(ds.fs, layout.join(ds.root, key))
        except FileNotFoundError:
            found = None
        if found != sha:
            bad += 1
            what = "missing" if found is None else f"hashes to {found}"
            severity = "fail" if ds.record.get("integrity") else "note"
            report.add(Finding("recipes", severity, key, f"the recipe of {sha[:12]} is {what}"))
    status = "pass" if not bad else "fail" if ds.record.get("integrity") else "skipped"
    return {"status": status, "recipes": len(shas), "bad": bad}
