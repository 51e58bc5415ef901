"""Where things live inside a dataset folder."""

from __future__ import annotations

import hashlib
import posixpath

COMMIT_MARKER = "_COMMITTED"
RUN_RECORD = "run.json"
INDEX = "index.parquet"
QUARANTINE = "quarantine.parquet"
STAGING = "_staging"
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


def output_key(image_id: str, variant: int, fmt: str) -> str:
    """Relative key of one variant's image: images/<shard>/<id without extension>__v003.jpg."""
    check_image_id(image_id)
    stem = posixpath.splitext(image_id)[0]
    return f"{IMAGES}/{shard(image_id)}/{stem}__v{variant:03d}.{EXTENSIONS[fmt]}"


def mask_key(image_id: str, variant: int) -> str:
    """Relative key of one variant's mask (1-bit PNG, white = filled)."""
    check_image_id(image_id)
    stem = posixpath.splitext(image_id)[0]
    return f"{MASKS}/{shard(image_id)}/{stem}__v{variant:03d}.png"


def join(root: str, key: str) -> str:
    """Join a dataset root URI (local path or URL) and a relative key."""
    return root.rstrip("/") + "/" + key
