"""The only place random number generators are born.

Every random choice in a run derives from ``(run_seed, image_id, variant)`` through a keyed hash,
so any row can be regenerated alone and no result depends on row order, worker count or time.
"""

from __future__ import annotations

import hashlib

import numpy as np

STREAMS = ("mask", "inpaint", "augment", "split")
_SEED_BITS = 63


def _digest63(key: bytes, *parts: str) -> int:
    h = hashlib.blake2b(key=key, digest_size=8)
    for part in parts:
        data = part.encode("utf-8")
        # Length-prefix each part so ("ab", "c") and ("a", "bc") never collide.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return int.from_bytes(h.digest(), "little") >> (64 - _SEED_BITS)


def variant_seed(run_seed: int, image_id: str, variant: int) -> int:
    """The 63-bit seed of one (source image, variant) pair; written on every row."""
    return _digest63(b"synthfill.variant", str(int(run_seed)), image_id, str(int(variant)))


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """An independent generator for one stage of one variant (see ``STREAMS``)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown RNG stream {stream!r}; expected one of {STREAMS}")
    return np.random.Generator(np.random.PCG64(_digest63(b"synthfill.stream", str(seed), stream)))


def unit_interval(key: str) -> float:
    """A stable number in [0, 1) for a string key (used to assign splits by group)."""
    return _digest63(b"synthfill.unit", key) / float(1 << _SEED_BITS)
