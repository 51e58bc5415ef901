"""Writing objects so that a reader never sees a half-written one."""

from __future__ import annotations

import os
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def publish_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` atomically; rewriting the same bytes is harmless (idempotent).

    Local files are written beside the target and renamed into place. Object stores get one
    PUT (``pipe_file``), which is all-or-nothing for objects below the multipart threshold.
    """
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    fs.pipe_file(path, data)
