"""C2PA-signed outputs: signed with a certificate chain made here, validated by c2pa-rs.

The chain is a test root CA and an end-entity signer it issued (C2PA refuses self-signed
signers). Trusting the root makes a signed output ``Trusted``; one flipped byte of image data
makes it ``Invalid`` (``assertion.dataHash.mismatch``).
"""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, compare_manifest, pipeline_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

from pipelines.audit import audit_dataset
from pipelines.c2pa_credentials import C2paSigner, verify
from pipelines.content_credentials import (
    CLASSICAL_FILL,
    MODEL_FILL,
    digital_source_type,
    embed_xmp,
    xmp_packet,
)
from pipelines.errors import RunError
from pipelines.manifest import C2paSpec, OutputSpec

SPEC = C2paSpec(certificate="${TEST_C2PA_CHAIN}", private_key="${TEST_C2PA_KEY}")


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "synthfill tests"),
        ]
    )


def _usage(**flags: bool) -> x509.KeyUsage:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment"]
    names += ["key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{n: flags.get(n, False) for n in names})


def make_chain() -> dict[str, bytes]:
    """A root CA and an ES256 signer it issued: {chain, key, root} as PEM."""
    now = dt.datetime.now(dt.UTC)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def issue(subject: str, public, ca: bool) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(_name("synthfill test root"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )

    root = (
        issue("synthfill test root", root_key.public_key(), ca=True)
        .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    signer = (
        issue("synthfill test signer", key.public_key(), ca=False)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "chain": signer.public_bytes(pem) + root.public_bytes(pem),
        "key": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "root": root.public_bytes(pem),
    }


@pytest.fixture(scope="module")
def chain() -> dict[str, bytes]:
    return make_chain()


def environ(chain: dict[str, bytes]) -> dict[str, str]:
    return {"TEST_C2PA_CHAIN": chain["chain"].decode(), "TEST_C2PA_KEY": chain["key"].decode()}


def encoded(fmt: str) -> bytes:
    pixels = (np.random.default_rng(3).random((96, 128, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt])
    return embed_xmp(buffer.getvalue(), fmt, xmp_packet(MODEL_FILL, {"seed": "7"}))


def flip_in_image_data(data: bytes, unsigned: bytes | None = None) -> bytes:
    """One bit of the compressed image data flipped: 64 bytes before the end of a JPEG, or
    where the unsigned file's last image bytes sit in the signed one (WebP keeps its manifest
    at the end)."""
    at = len(data) - 64
    if unsigned is not None:
        at = data.index(unsigned[-96:-64]) + 16
    tampered = bytearray(data)
    tampered[at] ^= 0x01
    return bytes(tampered)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_signed_output_validates_and_a_tampered_one_does_not(chain, fmt):
    original = encoded(fmt)
    fields = {"manifest_sha256": "ab" * 32, "seed": 7, "variant": 0, "inpainter": "lama"}
    signed = C2paSigner(SPEC, environ(chain)).sign(original, fmt, MODEL_FILL, fields)

    trusted = verify(signed, fmt, trust_anchors=chain["root"])
    assert (trusted.state, trusted.ok) == ("Trusted", True), trusted.failures
    assert trusted.provenance == fields
    unknown_signer = verify(signed, fmt)  # intact, but its root is no anchor of this validator
    assert unknown_signer.state == "Valid" and unknown_signer.ok
    assert unknown_signer.failures == ("signingCredential.untrusted",)
    # pixels and the XMP content credential survive signing
    decoded = [np.asarray(Image.open(io.BytesIO(b))) for b in (original, signed)]
    assert np.array_equal(*decoded)
    assert digital_source_type(signed) == MODEL_FILL

    tampered = verify(flip_in_image_data(signed, original), fmt, trust_anchors=chain["root"])
    assert tampered.state == "Invalid" and not tampered.ok
    assert "assertion.dataHash.mismatch" in tampered.failures
    assert "assertion.dataHash.mismatch" in tampered.describe()
    assert verify(original, fmt).state is None  # unsigned: no manifest, not a failure mode


def test_a_missing_key_or_a_wrong_key_is_a_clear_error(chain):
    with pytest.raises(RunError, match=r"\$\{TEST_C2PA_KEY\} is not set"):
        C2paSigner(SPEC, {"TEST_C2PA_CHAIN": chain["chain"].decode()})
    other = make_chain()
    mismatched = {**environ(chain), "TEST_C2PA_KEY": other["key"].decode()}
    with pytest.raises(RunError, match="does not belong to the first certificate"):
        C2paSigner(SPEC, mismatched)
    with pytest.raises(RunError, match="cannot read the PEM"):
        C2paSigner(SPEC, {**environ(chain), "TEST_C2PA_CHAIN": "-----BEGIN nonsense"})


def test_an_unsigned_recipe_keeps_its_hash():
    """Adding the option changed no existing dataset's recipe (or its rows' manifest_sha256)."""
    from pipelines.manifest_loader import load_manifest

    loaded = load_manifest(ROOT / "manifests" / "retail_shelf.yaml")
    assert "c2pa" not in loaded.manifest.recipe()["output"]
    signed = loaded.manifest.model_copy(
        update={"output": loaded.manifest.output.model_copy(update={"c2pa": SPEC})}
    )
    assert signed.recipe()["output"]["c2pa"]["certificate"] == "${TEST_C2PA_CHAIN}"
    assert signed.fingerprint() != loaded.manifest.fingerprint()


@pytest.mark.slow
def test_a_signed_run_validates_every_output_and_audits_by_pixels(chain, tmp_path):
    """The demo's compare manifest signed: every output is Trusted under the test root and names
    its row; the audit remakes rows unsigned and passes on pixels; a flipped byte fails both."""
    signing = "  c2pa:\n    certificate: ${TEST_C2PA_CHAIN}\n    private_key: ${TEST_C2PA_KEY}\n"
    manifest = compare_manifest(tmp_path, output_extra=signing)

    code, summary, stderr = pipeline_cli(str(manifest), env=environ(chain))
    assert code == 0 and summary["status"] == "committed", stderr[-3000:]
    rows = pq.read_table(tmp_path / "dataset" / "index.parquet").to_pylist()
    assert len(rows) == 8  # 2 shelves x 2 variants x 2 inpainters
    for row in rows:
        data = Path(row["output_uri"].removeprefix("file://")).read_bytes()
        verdict = verify(data, "jpeg", trust_anchors=chain["root"])
        assert verdict.state == "Trusted", (row["output_uri"], verdict.failures)
        said = verdict.provenance
        assert said["seed"] == row["seed"] and said["source_sha256"] == row["source_sha256"]
        assert said["manifest_sha256"] == row["manifest_sha256"]
        assert said["weights_sha256"] == row["weights_sha256"]
        expected = MODEL_FILL if row["weights_sha256"] else CLASSICAL_FILL
        assert digital_source_type(data) == expected

    report = audit_dataset(OutputSpec(uri=str(tmp_path / "dataset")), reproduce=4, seed=1)
    assert report.passed, report.findings
    assert report.checks["reproduce"]["identical"] == 4  # remade unsigned; pixels equal

    victim = Path(rows[2]["output_uri"].removeprefix("file://"))
    victim.write_bytes(flip_in_image_data(victim.read_bytes()))
    assert verify(victim.read_bytes(), "jpeg", trust_anchors=chain["root"]).state == "Invalid"
    positions = list(range(len(rows)))
    report = audit_dataset(OutputSpec(uri=str(tmp_path / "dataset")), reproduce=8, seed=1)
    assert not report.passed and report.checks["files"]["status"] == "fail"
    failing = {(f.check, f.subject) for f in report.findings if f.severity == "fail"}
    named = f"{rows[2]['image_id']} v{rows[2]['variant']} [{rows[2]['inpainter']}]"
    assert ("files", named) in failing and ("reproduce", named) in failing, failing
    assert report.checks["reproduce"]["rows"] == len(positions)
