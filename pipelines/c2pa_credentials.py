"""C2PA manifests on outputs: signed content credentials a C2PA validator checks.

With ``output.c2pa`` set, every output image carries a C2PA manifest store (JUMBF: JPEG APP11,
PNG ``caBX``, WebP ``C2PA`` chunk) signed with the configured certificate chain, after the XMP
packet is spliced in. The manifest says the same as the XMP and the index row, and no more:

- ``c2pa.actions``: ``c2pa.created`` with the IPTC digital source type (a trained model's fill
  composited into a real image, or an algorithmic fill) and synthfill as the software agent;
- ``org.synthfill.provenance``: the recipe hash, variant, seed, inpainter and the hashes of the
  source and the model weights: enough to find the index row (and so remake it), and, like the
  XMP packet, nothing of the source's name (a path may identify a patient).

No thumbnail is embedded (it would double small outputs), nothing is fetched from the network
unless ``timestamp_url`` names a time-stamping authority. A signature carries fresh claim ids, so
signed bytes differ between two builds: ``pipeline audit --reproduce`` compares decoded pixels
for a signed dataset, and validates each output's manifest instead.

The key and certificate are ``${NAME}`` references resolved on each worker (PEM text, or the
path of a PEM file there), like storage credentials: they never enter the recipe, run record or
logs.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.content_credentials import IPTC_TYPES
from pipelines.credentials import is_reference
from pipelines.errors import RunError

MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
ASSERTION = "org.synthfill.provenance"
# A validator's overall verdicts: Valid (intact, signer unknown to it), Trusted (intact and the
# chain ends at an anchor it trusts), Invalid (tampered or malformed).
GOOD_STATES = ("Valid", "Trusted")


def _c2pa() -> Any:
    try:
        import c2pa
    except ImportError:
        raise RunError(
            "output.c2pa needs the C2PA library on every node: pip install 'synthfill[c2pa]'"
        ) from None
    return c2pa


def _pem(field: str, reference: str, environ: dict[str, str]) -> bytes:
    if not is_reference(reference):
        raise RunError(f"output.c2pa.{field} must be a ${{NAME}} reference to a variable")
    name = reference[2:-1]
    value = environ.get(name)
    if not value:
        raise RunError(
            f"output.c2pa.{field}: ${{{name}}} is not set in this process's environment; export "
            "it where the pipeline runs (on a Ray cluster: on every node)"
        )
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).expanduser().read_bytes()
    except OSError as exc:
        raise RunError(f"output.c2pa.{field}: ${{{name}}} names {value!r}: {exc}") from None


def _settings(c2pa: Any, anchors: bytes | None = None) -> Any:
    config: dict[str, Any] = {
        "builder": {"thumbnail": {"enabled": False}},
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if anchors is not None:
        config["trust"] = {"user_anchors": anchors.decode()}
    return c2pa.Settings.from_dict(config)


class C2paSigner:
    """Signs encoded outputs with one certificate chain; build once per worker."""

    def __init__(self, spec: Any, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        self._c2pa = c2pa = _c2pa()
        chain = _pem("certificate", spec.certificate, environ)
        key = _pem("private_key", spec.private_key, environ)
        _check_pair(chain, key)
        tsa = spec.timestamp_url.encode() if spec.timestamp_url else None
        try:
            self._signer = c2pa.Signer.from_info(
                c2pa.C2paSignerInfo(spec.algorithm.encode(), chain, key, tsa)
            )
        except c2pa.C2paError as exc:
            raise RunError(
                f"output.c2pa: cannot make a signer from the key and chain: {exc}"
            ) from None
        self._context = c2pa.Context(_settings(c2pa))
        self._version = _synthfill_version()

    def sign(self, data: bytes, fmt: str, source_type: str, fields: dict[str, Any]) -> bytes:
        """``data`` (an encoded image) with a signed C2PA manifest store; pixels untouched."""
        manifest = {
            "claim_generator_info": [{"name": "synthfill", "version": self._version}],
            "title": f"synthfill output ({fmt})",
            "assertions": [
                {
                    "label": "c2pa.actions",
                    "data": {
                        "actions": [
                            {
                                "action": "c2pa.created",
                                "digitalSourceType": IPTC_TYPES + source_type,
                                "softwareAgent": {"name": "synthfill", "version": self._version},
                            }
                        ]
                    },
                },
                {"label": ASSERTION, "data": fields},
            ],
        }
        out = io.BytesIO()
        with self._c2pa.Builder(manifest, context=self._context) as builder:
            builder.sign(self._signer, MIME[fmt], io.BytesIO(data), out)
        return out.getvalue()


def _check_pair(chain: bytes, key: bytes) -> None:
    """Fail on the worker's first breath, not on every output, when the key and chain differ."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    try:
        signer = x509.load_pem_x509_certificates(chain)[0]
        private = load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise RunError(f"output.c2pa: cannot read the PEM chain or key: {exc}") from None
    public = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if signer.public_key().public_bytes(*public) != private.public_key().public_bytes(*public):
        raise RunError(
            "output.c2pa: the private key does not belong to the first certificate of the chain "
            f"({signer.subject.rfc4514_string()}); the chain must start with the signer's own"
        )


@dataclass(frozen=True)
class Verdict:
    """What a C2PA validator says of one file."""

    state: str | None  # Valid, Trusted or Invalid; None: the file carries no manifest
    failures: tuple[str, ...]  # validation codes, e.g. assertion.dataHash.mismatch
    provenance: dict[str, Any] | None  # the org.synthfill.provenance assertion

    @property
    def ok(self) -> bool:
        return self.state in GOOD_STATES

    def describe(self) -> str:
        if self.state is None:
            return "no C2PA manifest"
        codes = [c for c in self.failures if c != "signingCredential.untrusted"]
        return f"C2PA {self.state}" + (f" ({', '.join(codes)})" if codes else "")


def verify(data: bytes, fmt: str, trust_anchors: bytes | None = None) -> Verdict:
    """Validate the C2PA manifest in ``data``; with ``trust_anchors`` (PEM roots) a chain ending
    at one of them is ``Trusted``. Intact under an unknown signer is ``Valid``."""
    c2pa = _c2pa()
    context = c2pa.Context(_settings(c2pa, trust_anchors))
    try:
        reader = c2pa.Reader(MIME[fmt], io.BytesIO(data), context=context)
    except c2pa.C2paError as exc:
        if "ManifestNotFound" in type(exc).__name__ or "not found" in str(exc).lower():
            return Verdict(None, (), None)
        return Verdict("Invalid", (str(exc),), None)
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state()
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = tuple(f.get("code", "") for f in results.get("failure", []))
    provenance = next(
        (a.get("data") for a in active.get("assertions", []) if a.get("label") == ASSERTION), None
    )
    return Verdict(state, failures, provenance)


def _synthfill_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthfill")
    except PackageNotFoundError:
        return "0+unknown"
