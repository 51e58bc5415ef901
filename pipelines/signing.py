"""Ed25519 signatures of run records: who vouches for how a version was made.

With ``output.sign_record: ${NAME}`` (the variable holds a PEM Ed25519 private key, or the path
of one) each committed version's ``run.json`` gets a detached ``run.json.sig`` beside it:
the algorithm, the public key, its id (sha256 of the raw public key) and the signature over
the record's exact bytes. The record holds the Merkle root over every output and mask and the
hashes of the index, so one signature covers the whole version. ``pipeline audit
--trusted-key PUB.pem`` checks it against a key the auditor trusts (without one, only that the
record is intact under the key it names).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipelines.credentials import is_reference
from pipelines.errors import RunError

SIGNATURE_SUFFIX = ".sig"
ALGORITHM = "ed25519"


def load_private_key(reference: str, environ: dict[str, str] | None = None) -> Any:
    """The Ed25519 key a ``${NAME}`` reference names (PEM text, or a path to a PEM file)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not is_reference(reference):
        raise RunError("output.sign_record must be a ${NAME} reference to a variable")
    name = reference[2:-1]
    value = (os.environ if environ is None else environ).get(name)
    if not value:
        raise RunError(f"output.sign_record: ${{{name}}} is not set in this environment")
    pem = value.encode() if "-----BEGIN" in value else Path(value).expanduser().read_bytes()
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise RunError(f"output.sign_record: ${{{name}}} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RunError(f"output.sign_record: ${{{name}}} is not an Ed25519 key")
    return key


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()


def sign(record_bytes: bytes, private_key: Any) -> bytes:
    """The detached signature document for a record's exact bytes."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    doc = {
        "algorithm": ALGORITHM,
        "public_key": base64.b64encode(public).decode(),
        "key_id": key_id(public),
        "signed_sha256": hashlib.sha256(record_bytes).hexdigest(),
        "signature": base64.b64encode(private_key.sign(record_bytes)).decode(),
    }
    return json.dumps(doc, indent=2).encode()


def verify(record_bytes: bytes, signature_doc: bytes, trusted_pem: bytes | None) -> str | None:
    """None when the signature holds (under the trusted key if given), else why not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_public_key,
    )

    doc = json.loads(signature_doc)
    if doc.get("algorithm") != ALGORITHM:
        return f"unknown signature algorithm {doc.get('algorithm')!r}"
    public = base64.b64decode(doc["public_key"])
    if trusted_pem is not None:
        trusted = load_pem_public_key(trusted_pem).public_bytes(Encoding.Raw, PublicFormat.Raw)
        if trusted != public:
            return f"signed by key {key_id(public)[:16]}…, not the trusted {key_id(trusted)[:16]}…"
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            base64.b64decode(doc["signature"]), record_bytes
        )
    except InvalidSignature:
        return "the signature does not match the record's bytes"
    return None
