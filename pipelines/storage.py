"""Writing objects so that a reader never sees a half-written one."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable

import fsspec
from fsspec.implementations.local import LocalFileSystem


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def publish_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` atomically; rewriting the same bytes is harmless (idempotent).

    Local files are written beside the target and renamed into place. Object stores get one
    PUT (``pipe_file``), which is all-or-nothing: the store keeps the object only when the whole
    body arrived. Never ``with fs.open(path, "wb")``: s3fs publishes what was written so far when
    an exception leaves that block. s3fs writes 100 MiB and more as a multipart upload, aborted
    when it fails; one left by a killed process stays invisible until ``abort_multipart_uploads``.
    """
    if is_local(fs):
        write_aside(path, data, os.replace)
        return
    fs.pipe_file(path, data)


def write_aside(path: str, data: bytes, place: Callable[[str, str], None]) -> None:
    """Write a local file beside ``path``, then ``place`` it there in one step: ``os.replace``
    (overwrites) or ``os.link`` (fails if ``path`` exists). A reader never sees half a file."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def create_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` only if nothing is there: FileExistsError otherwise.

    Of two processes creating one path, exactly one succeeds. Local files are written aside
    and hard-linked into place (a link never replaces a file). Object stores get a conditional
    PUT (``If-None-Match: *``: AWS S3, MinIO, SeaweedFS and moto honour it).
    """
    if is_local(fs):
        write_aside(path, data, os.link)
        return
    try:
        fs.pipe_file(path, data, mode="create")
    except TypeError:  # a store library without create-only writes (no ``mode``)
        if fs.exists(path):
            raise FileExistsError(path) from None
        logging.getLogger("synthfill").warning(
            "%s cannot write create-only: two runs committing at once are not kept apart",
            type(fs).__name__,
        )
        fs.pipe_file(path, data)
    except FileExistsError:
        raise
    except OSError as exc:
        # Some servers answer 412 Precondition Failed as a plain error (SeaweedFS): if the
        # object is there now, it is the other writer's.
        if "pre-condition" in str(exc).lower() or "precondition" in str(exc).lower():
            raise FileExistsError(path) from exc
        raise


def abort_multipart_uploads(
    fs: fsspec.AbstractFileSystem,
    root: str,
    ours: Callable[[str], bool],
    before: float | None = None,
) -> list[str]:
    """Abort the pending S3 multipart uploads under ``root`` whose relative key ``ours`` accepts.

    A process killed in the middle of a multipart upload leaves it pending: no object is
    visible, but the parts are stored (and billed) until the upload is aborted. Call this only
    when no upload of your own is in flight; ``before`` (epoch seconds) spares uploads started
    later, by a run that may still be going. Returns the paths aborted; other stores have none.
    """
    if "s3" not in fs.protocol:
        return []
    bucket, key, _ = fs.split_path(root)
    prefix = key.rstrip("/") + "/" if key else ""
    query: dict[str, str] = {"Bucket": bucket, "Prefix": prefix}
    aborted = []
    while True:
        page = fs.call_s3("list_multipart_uploads", **query)
        for upload in page.get("Uploads", []):
            started = upload.get("Initiated")
            if before is not None and started is not None and started.timestamp() >= before:
                continue
            if ours(upload["Key"][len(prefix) :]):
                fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )
                aborted.append(f"{bucket}/{upload['Key']}")
        if not page.get("IsTruncated"):
            return aborted
        query["KeyMarker"] = page["NextKeyMarker"]
        query["UploadIdMarker"] = page["NextUploadIdMarker"]
