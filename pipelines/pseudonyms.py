"""Keyed pseudonyms for source paths, whose file and folder names can carry patient data.

``source.pseudonymize`` turns ``patients/DOE_JOHN/19600101.dcm`` into
``3f0c…/9a41….dcm``: each path segment is replaced by 32 hex digits (128 bits) of
HMAC-SHA256(key, the path up to and including it), and the extension is kept. So:

- the same key gives the same id every run (nightly runs still match unchanged items);
- files of one folder share its pseudonym, so a split ``group_pattern`` on the first folder still
  keeps a patient's images together;
- without the key a pseudonym cannot be computed from a guessed name (a plain hash could be).

The item table then carries the pseudonym as ``image_id`` (and in ``uri``) and the real relative
key in ``SOURCE_KEY``, which workers read from and which no row, key or log line ever names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import RunError

SOURCE_KEY = "source_key"  # the real path relative to source.uri; never written to a row
MIN_KEY_CHARS = 32
_DIGITS = 32  # hex digits per segment
_CONTEXT = b"synthfill/pseudonym/v1\x00"  # keeps these HMACs apart from other uses of a key
_ROWS_PER_CHUNK = 1_000_000  # ids converted to Python strings at a time


def pseudonym_key(reference: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The key a ``${NAME}`` reference names, from the environment (RunError when unusable)."""
    environ = os.environ if environ is None else environ
    name = reference[2:-1]
    value = environ.get(name)
    if value is None:
        raise RunError(
            f"source.pseudonym_key refers to ${{{name}}}, which is not set in this process's "
            "environment; export it where the run is planned"
        )
    if len(value) < MIN_KEY_CHARS:
        raise RunError(
            f"${{{name}}} (source.pseudonym_key) has {len(value)} characters; use at least "
            f"{MIN_KEY_CHARS} random ones (e.g. openssl rand -hex 32)"
        )
    return value.encode("utf-8")


def pseudonymize(
    items: pa.Table, key: bytes, extensions: tuple[str, ...], uri_prefix: str
) -> pa.Table:
    """``items`` (``listing.ITEM_SCHEMA``) with pseudonymous ids, the real id in ``SOURCE_KEY``,
    sorted by the new image_id. ``uri`` becomes ``uri_prefix`` (the source root) + pseudonym: a
    label for rows and messages, not a readable address."""
    ids = items["image_id"]
    pseudonyms = pa.chunked_array(
        [
            pa.array(_pseudonyms(chunk.to_pylist(), key, extensions), pa.string())
            for chunk in _chunks(ids.combine_chunks())
        ],
        pa.string(),
    )
    uri = pc.binary_join_element_wise(uri_prefix, pseudonyms, "")
    table = items.set_column(0, "image_id", pseudonyms).set_column(1, "uri", uri)
    table = table.append_column(SOURCE_KEY, ids)
    return table.take(pc.sort_indices(table["image_id"]))


def pseudonym(relative: str, key: bytes, extensions: tuple[str, ...]) -> str:
    """The pseudonym of one relative path (see the module notes)."""
    return _pseudonyms([relative], key, extensions)[0]


def scrub(text: str, real: str, pseudonymous: str) -> str:
    """``text`` with the real path, its URL-quoted form and each of its names (3+ characters,
    with and without extension) replaced by the pseudonym: for error details that quote a
    path (an OS error, a storage library's message)."""
    pieces = {real, quote(real)}
    for segment in real.split("/"):
        pieces.update({segment, quote(segment), segment.rsplit(".", 1)[0]})
    for piece in sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True):
        text = text.replace(piece, pseudonymous)
    return text


def _pseudonyms(ids: list[str], key: bytes, extensions: tuple[str, ...]) -> list[str]:
    memo: dict[str, str] = {}  # folders repeat for every file in them

    def token(path: str) -> str:
        if path not in memo:
            digest = hmac.new(key, _CONTEXT + path.encode("utf-8"), hashlib.sha256)
            memo[path] = digest.hexdigest()[:_DIGITS]
        return memo[path]

    out = []
    for image_id in ids:
        segments = image_id.split("/")
        tokens = [token("/".join(segments[: i + 1])) for i in range(len(segments))]
        out.append("/".join(tokens) + _extension(image_id, extensions))
    return out


def _extension(image_id: str, extensions: tuple[str, ...]) -> str:
    """The longest of the manifest's extensions the id ends with, in lower case: a listing keeps
    only such ids, and nothing else of the real name may show."""
    lower = image_id.lower()
    return max((ext for ext in extensions if lower.endswith(ext)), key=len, default="")


def _chunks(array: pa.Array) -> list[pa.Array]:
    return [array.slice(i, _ROWS_PER_CHUNK) for i in range(0, len(array), _ROWS_PER_CHUNK)]
