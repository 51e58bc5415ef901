"""Where things live inside a dataset folder."""

from __future__ import annotations

import hashlib

COMMIT_MARKER = "_COMMITTED"
RUN_RECORD = "run.json"
INDEX = "index.parquet"
QUARANTINE = "quarantine.parquet"
STAGING = "_staging"
RECIPES = "recipes"  # recipes/<manifest_sha256>.json: what each fingerprint stands for
IMAGES = "images"
MASKS = "masks"
EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp"}


def shard(image_id: str) -> str:
    """Two hex digits spreading keys over 256 prefixes (object stores throttle per prefix)."""
    return hashlib.blake2b(image_id.encode("utf-8"), digest_size=1).hexdigest()


def check_image_id(image_id: str) -> None:
    """Refuse ids that could escape the dataset folder when used in a key."""
    parts = image_id.split("/")
    if not image_id or "\x00" in image_id or "\\" in image_id or image_id.startswith("/"):
        raise ValueError(f"image_id {image_id!r} cannot be used as a key")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"image_id {image_id!r} has an empty, '.' or '..' path segment")


def content_tag(manifest_sha256: str, source_sha256: str) -> str:
    """8 hex digits naming what made an output (recipe + source bytes).

    Keys carry it so a run never overwrites a file that a committed index still points to: the
    same inputs give the same key and the same bytes (retries are idempotent), other inputs give
    another key.
    """
    data = f"{manifest_sha256}:{source_sha256}".encode()
    return hashlib.blake2b(data, digest_size=4).hexdigest()


def output_key(
    image_id: str, variant: int, fmt: str, tag: str, inpainter: str | None = None
) -> str:
    """Relative key of one variant's image: images/<shard>/<image_id>__v003-<tag>.jpg.

    The whole image_id (extension included) is kept so ``x.jpg`` and ``x.png`` never collide.
    With several inpainters side by side their label is added: ``__v003-lama-<tag>.jpg``.
    """
    return f"{IMAGES}/{_stem(image_id, variant, tag, inpainter)}.{EXTENSIONS[fmt]}"


def mask_key(image_id: str, variant: int, tag: str, inpainter: str | None = None) -> str:
    """Relative key of one variant's mask (1-bit PNG, white = filled)."""
    return f"{MASKS}/{_stem(image_id, variant, tag, inpainter)}.png"


def _stem(image_id: str, variant: int, tag: str, inpainter: str | None) -> str:
    check_image_id(image_id)
    label = f"{inpainter}-" if inpainter else ""
    return f"{shard(image_id)}/{image_id}__v{variant:03d}-{label}{tag}"


def join(root: str, key: str) -> str:
    """Join a dataset root URI (local path or URL) and a relative key."""
    return root.rstrip("/") + "/" + key


def recipe_key(manifest_sha256: str) -> str:
    """``recipes/<sha256>.json``: the recipe a fingerprint stands for, under its own hash."""
    return f"{RECIPES}/{manifest_sha256}.json"
