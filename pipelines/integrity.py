"""Tamper evidence for a committed version: a Merkle root over its files, hashes of its tables.

Each index row is one leaf: the keys (relative to the dataset root) and sha256 of its output and
its mask. Leaves are taken in the index file's row order (Ray returns rows in any order, but a
version's index never changes once written) and combined as in RFC 6962 (Certificate
Transparency): ``leaf = sha256(0x00 || data)``, ``node = sha256(0x01 || left || right)``, the
tree split at the largest power of two below the leaf count. The root goes into the run
record; the audit recomputes it from the index, so an index row edited to match a tampered file
changes the root, and one row's inclusion can be proven with log2(n) hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

ALGORITHM = "rfc6962-sha256"
LEAF_COLUMNS = ("output_uri", "output_sha256", "mask_uri", "mask_sha256")


def leaf_data(
    root_uri: str, output_uri: str, output_sha: str, mask_uri: str, mask_sha: str
) -> bytes:
    """What one index row contributes: relative keys and hashes, NUL-separated."""
    prefix = root_uri.rstrip("/") + "/"
    keys = [uri[len(prefix) :] if uri.startswith(prefix) else uri for uri in (output_uri, mask_uri)]
    return "\0".join((keys[0], output_sha or "", keys[1], mask_sha or "")).encode()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """Streams leaves in and gives the RFC 6962 root, holding O(log n) hashes."""

    def __init__(self) -> None:
        self.count = 0
        self._stack: list[tuple[int, bytes]] = []  # (size of a full subtree, its hash)

    def add(self, leaf: bytes) -> None:
        size, digest = 1, leaf
        while self._stack and self._stack[-1][0] == size:
            _, left = self._stack.pop()
            size, digest = size * 2, node_hash(left, digest)
        self._stack.append((size, digest))
        self.count += 1

    def add_rows(self, table: pa.Table, root_uri: str) -> None:
        """Add one leaf per row of an index table (in its order)."""
        for row in _leaf_rows(table):
            self.add(leaf_hash(leaf_data(root_uri, *row)))

    def root(self) -> str:
        """Hex root; the hash of nothing for an empty tree (RFC 6962)."""
        if not self._stack:
            return hashlib.sha256(b"").hexdigest()
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):  # right to left: smaller trees sit right
            digest = node_hash(left, digest)
        return digest.hex()

    def summary(self) -> dict[str, Any]:
        return {"algorithm": ALGORITHM, "leaves": self.count, "merkle_root": self.root()}


def _leaf_rows(table: pa.Table) -> Iterator[tuple[str, str, str, str]]:
    columns = [table[name].to_pylist() for name in LEAF_COLUMNS]
    yield from zip(*columns, strict=True)


def proof_ranges(index: int, count: int, start: int = 0) -> list[tuple[int, int]]:
    """Leaf ranges whose subtree roots make the audit path of leaf ``index`` (RFC 9162
    section 2.1.3.1), leaf side first: one streaming pass over the leaves can then prove it."""
    if count <= 1:
        return []
    split = _split(count)
    if index < split:
        return proof_ranges(index, split, start) + [(start + split, start + count)]
    return proof_ranges(index - split, count - split, start + split) + [(start, start + split)]


def inclusion_proof(leaves: Iterable[bytes], index: int, count: int) -> list[str]:
    """The audit path of leaf ``index`` among ``count`` leaves, as hex, in one pass."""
    ranges = proof_ranges(index, count)
    trees = [MerkleTree() for _ in ranges]
    for position, leaf in enumerate(leaves):
        for (begin, end), tree in zip(ranges, trees, strict=True):
            if begin <= position < end:
                tree.add(leaf)
                break
    return [tree.root() for tree in trees]


def verify_inclusion(leaf: bytes, index: int, count: int, proof: list[str], root: str) -> bool:
    """Whether ``proof`` takes ``leaf`` (its hash) at ``index`` of ``count`` leaves to ``root``
    (RFC 9162 section 2.1.3.2)."""
    if index >= count:
        return False
    fn, sn, digest = index, count - 1, leaf
    for sibling in (bytes.fromhex(p) for p in proof):
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            digest = node_hash(sibling, digest)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            digest = node_hash(digest, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and digest.hex() == root


def _split(count: int) -> int:
    """The largest power of two smaller than ``count`` (count >= 2)."""
    return 1 << ((count - 1).bit_length() - 1)


class HashingWriter:
    """A write-only file wrapper that hashes what passes through (Parquet writes stream here)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, flush, closed, close...: the handle's own
        return getattr(self.handle, name)


def iter_leaves(tables: Iterable[pa.Table], root_uri: str) -> Iterator[bytes]:
    """Leaf hashes of index tables, in order (for proofs and checks)."""
    for table in tables:
        for row in _leaf_rows(table):
            yield leaf_hash(leaf_data(root_uri, *row))
