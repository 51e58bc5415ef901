"""`pipeline audit` and `pipeline lineage` on a dataset written by the demo's manifest.

The compare manifest (a classical and a trained model fill side by side, the demo's second run)
runs once into a folder of its own, over copies of two bundled shelf photos and of the model's
weights, so tests can change a source, the weights or an output and see the audit notice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, compare_manifest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from pipelines.audit import audit_dataset
from pipelines.integrity import MerkleTree, inclusion_proof, leaf_hash, verify_inclusion
from pipelines.manifest import OutputSpec
from pipelines.manifest_loader import load_manifest


@pytest.fixture(scope="module")
def made(ray_local, tmp_path_factory) -> Path:
    """A committed dataset of 2 shelves x 2 variants x 2 inpainters, and its inputs."""
    from pipelines.run import run_manifest

    work = tmp_path_factory.mktemp("audit")
    shutil.copy(ROOT / "checkpoints" / "retail_shelf.safetensors", work / "model.safetensors")
    signing = "  sign_record: ${AUDIT_SIGNING_KEY}\n"
    compare_manifest(work, work / "model.safetensors", signing)
    key = Ed25519PrivateKey.generate()
    (work / "signer.pem").write_bytes(
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    )
    (work / "signer.pub.pem").write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    os.environ["AUDIT_SIGNING_KEY"] = str(work / "signer.pem")  # a path; PEM text works too
    try:
        summary = run_manifest(load_manifest(work / "compare.yaml"))
    finally:
        del os.environ["AUDIT_SIGNING_KEY"]
    assert summary.status == "committed" and summary.rows_written == 8, summary.message
    return work


def copy_of(made: Path, tmp_path: Path) -> Path:
    """A copy of the whole work folder (dataset, sources, weights) with paths rewritten."""
    target = tmp_path / "copy"
    shutil.copytree(made, target)
    for name in ("run.json", "index.parquet"):
        assert (target / "dataset" / name).exists()
    return target


def audit(folder: Path, **options):
    return audit_dataset(OutputSpec(uri=str(folder)), **options)


def test_the_demo_dataset_passes_and_every_row_is_made_again(made):
    trusted = (made / "signer.pub.pem").read_bytes()
    report = audit(made / "dataset", reproduce=8, seed=0, trusted_key=trusted)
    assert report.passed, report.findings
    checks = report.checks
    assert {name: c["status"] for name, c in checks.items()} == {
        "signature": "pass",
        "record": "pass",
        "merkle": "pass",
        "files": "pass",
        "recipes": "pass",
        "weights": "pass",
        "sources": "pass",
        "reproduce": "pass",
    }
    assert checks["files"]["files"] == 16 and checks["weights"]["weights"] == 1
    assert checks["reproduce"]["identical"] == 8  # the model fill too: CPU, bit for bit
    assert report.findings == []


def test_one_flipped_byte_fails_the_audit_naming_the_row(made, tmp_path):
    folder = copy_of(made, tmp_path) / "dataset"
    row = pq.read_table(folder / "index.parquet").slice(5, 1).to_pylist()[0]
    victim = Path(
        row["output_uri"].removeprefix("file://").replace(str(made), str(tmp_path / "copy"))
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "cli", "audit", str(folder)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    named = f"{row['image_id']} v{row['variant']} [{row['inpainter']}]"
    failing = [line for line in done.stdout.splitlines() if line.startswith("fail")]
    assert len(failing) == 1 and named in failing[0], done.stdout
    assert "FAILED" in done.stdout


def test_an_index_edited_to_match_a_changed_file_breaks_the_record(made, tmp_path):
    folder = copy_of(made, tmp_path) / "dataset"
    marker = json.loads((folder / "_COMMITTED").read_text())
    index_path = folder / marker["index"]
    table = pq.read_table(index_path)
    rows = table.to_pylist()
    rows[0]["output_sha256"] = "0" * 64  # as if the file were swapped and the index "fixed"
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), index_path)
    report = audit(folder)
    assert report.checks["record"]["status"] == "fail"  # the index file's own hash
    assert report.checks["merkle"]["status"] == "fail"  # the root over (key, sha256) rows
    assert report.checks["files"]["bad"] == 1
    assert not report.passed


def test_changed_sources_are_drift_and_changed_weights_fail(made, tmp_path):
    work = copy_of(made, tmp_path)
    source = made / "shelves" / "shelf_001.jpg"  # what the rows name
    saved = source.read_bytes()
    try:
        source.write_bytes(b"not the photo any more")
        report = audit(work / "dataset", manifest=None)
    finally:
        source.write_bytes(saved)
    assert report.checks["sources"] == {
        **report.checks["sources"],
        "status": "drift",
        "changed": 1,
        "gone": 0,
    }
    assert report.passed  # drift is reported, not a failure
    # The run record names where the weights were; point the copy's records at its own copy.
    for record_path in (work / "dataset").glob("**/run.json"):
        text = record_path.read_text().replace(str(made / "model"), str(work / "model"))
        record_path.write_text(text)
    weights = work / "model.safetensors"
    saved = weights.read_bytes()
    weights.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
    report = audit(work / "dataset")
    assert report.checks["weights"]["status"] == "fail" and not report.passed
    assert "sha256" in next(f.detail for f in report.findings if f.check == "weights")


def test_lineage_shows_the_chain_and_a_verified_proof(made):
    done = subprocess.run(
        [sys.executable, "-m", "cli", "lineage", str(made / "dataset"), "shelf_001.jpg"]
        + ["--variant", "1", "--inpainter", "maskaware", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    (chain,) = found["chains"]
    index = pq.read_table(made / "dataset" / "index.parquet").to_pylist()
    row = next(
        r
        for r in index
        if r["image_id"] == "shelf_001.jpg" and r["variant"] == 1 and r["inpainter"] == "maskaware"
    )
    assert (
        chain["masks"]["seed"] == row["seed"] and chain["output"]["sha256"] == row["output_sha256"]
    )
    assert chain["inpainter"]["weights_sha256"] == row["weights_sha256"]
    assert chain["run"]["weights"]["sha256"] == row["weights_sha256"]
    assert chain["recipe"]["stored"] and chain["recipe"]["excerpt"]["seed"] == 20261122
    assert chain["proof"]["verified"] and chain["proof"]["leaves"] == 8
    missing = subprocess.run(
        [sys.executable, "-m", "cli", "lineage", str(made / "dataset"), "nope.jpg"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert missing.returncode == 1 and "has no row for 'nope.jpg'" in missing.stderr


def test_the_merkle_root_matches_rfc6962_and_proofs_verify_only_their_leaf():
    # Certificate Transparency's reference vector: 8 leaves, known root.
    tree = MerkleTree()
    for data in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657"):
        tree.add(leaf_hash(bytes.fromhex(data)))
    tree.add(leaf_hash(bytes.fromhex("606162636465666768696a6b6c6d6e6f")))
    assert tree.root() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    for count in range(1, 34):
        leaves = [leaf_hash(str(i).encode()) for i in range(count)]
        tree = MerkleTree()
        for leaf in leaves:
            tree.add(leaf)
        for i in range(count):
            path = inclusion_proof(iter(leaves), i, count)
            assert verify_inclusion(leaves[i], i, count, path, tree.root())
            assert not verify_inclusion(leaf_hash(b"other"), i, count, path, tree.root())


def test_a_signed_record_fails_under_another_key_or_once_edited(made, tmp_path):
    folder = copy_of(made, tmp_path) / "dataset"
    stranger = Ed25519PrivateKey.generate().public_key()
    other = stranger.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    report = audit(folder, trusted_key=other)
    assert report.checks["signature"]["status"] == "fail" and not report.passed
    assert "not the trusted" in report.findings[0].detail
    marker = json.loads((folder / "_COMMITTED").read_text())
    record = folder / marker["run_record"]
    record.write_text(
        record.read_text().replace('"items_quarantined": 0', '"items_quarantined": 1', 1)
    )
    report = audit(folder)  # no trusted key: still checked under the key it names
    assert report.checks["signature"]["status"] == "fail"
    assert "does not match" in report.findings[0].detail


def test_model_fills_and_classical_fills_say_which_they_are(made):
    from pipelines.content_credentials import CLASSICAL_FILL, MODEL_FILL, digital_source_type

    expected = {"telea": CLASSICAL_FILL, "maskaware": MODEL_FILL}
    for row in pq.read_table(made / "dataset" / "index.parquet").to_pylist():
        data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
        assert digital_source_type(data) == expected[row["inpainter"]], row["output_uri"]
