"""Fetching model weights from any fsspec URL into a local, hash-checked copy.

Local paths (and ``file://`` URLs) are used in place. Anything else is downloaded into
``<cache>/weights/<first 16 hex of sha256(uri)>/<basename>``; a download is written beside its
final name, hashed, checked against the pin and only then renamed into place, so the cache never
holds a half-written or unpinned-mismatching copy. I/O problems raise ``WeightsFetchError``; pin
problems raise ``inpaint_ops.weights.WeightsError`` (a ValueError).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import fsspec

from inpaint_ops.weights import CHUNK_BYTES, check_pin, sha256_path
from pipelines.errors import RunError
from pipelines.sources import filesystem
from pipelines.storage import is_local

CACHE_ENV = "SYNTHFILL_CACHE"


class WeightsFetchError(RunError):
    """Weights cannot be found, downloaded or cached (an I/O problem, not a pin problem)."""


@dataclass(frozen=True)
class LocalWeights:
    """A local file or folder holding the weights, its sha256, and the URI it came from."""

    path: Path
    sha256: str
    uri: str


def fetch_weights(
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    expected_sha256: str | None = None,
    require_pin: bool = False,
    cache_dir: Path | None = None,
) -> LocalWeights:
    """A local copy of the weights at ``uri`` (file or folder), checked against its pin.

    The hash is ``sha256_file`` for a file and ``sha256_tree`` for a folder. A cached copy is
    re-used only when it matches ``expected_sha256``: without a pin nothing says the cached
    bytes are still what ``uri`` holds, so they are downloaded again. ``require_pin`` makes a
    missing pin an error (weights that can run code when loaded).
    """
    fs, path = filesystem(uri, dict(storage_options or {}))
    verify = partial(
        check_pin, expected=expected_sha256, what=f"weights {uri}", required=require_pin
    )
    if is_local(fs):
        local = Path(path)
        if not local.exists():
            raise WeightsFetchError(f"weights {uri!r} not found; check the path")
        sha = _hash_local(local, uri)
        verify(sha)
        return LocalWeights(local, sha, uri)
    target = cache_root(cache_dir) / "weights" / _uri_key(uri) / _basename(path)
    try:
        sha = _cached_or_downloaded(
            fs, path.rstrip("/") or path, uri, target, expected_sha256, verify
        )
    except OSError as exc:
        raise WeightsFetchError(
            f"cannot fetch weights {uri!r} into {target}: {exc}; check the storage_options "
            f"(credentials, endpoint) and that the cache folder is writable (${CACHE_ENV})"
        ) from exc
    return LocalWeights(target, sha, uri)


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$SYNTHFILL_CACHE``, else ``~/.cache/synthfill``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synthfill").expanduser()


def _uri_key(uri: str) -> str:
    # One folder per URI keeps two models with the same file name apart.
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]


def _basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) or "weights"


def _hash_local(path: Path, uri: str) -> str:
    try:
        return sha256_path(path)
    except OSError as exc:
        raise WeightsFetchError(f"cannot read weights {uri!r} at {path}: {exc}") from exc


@contextmanager
def _node_lock(target: Path) -> Iterator[None]:
    """An exclusive lock (flock) on ``.<name>.lock`` beside ``target``, held while inside."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _cached_or_downloaded(
    fs: fsspec.AbstractFileSystem,
    path: str,
    uri: str,
    target: Path,
    expected: str | None,
    verify: Callable[[str], None],
) -> str:
    """The sha256 of ``target`` after re-using it (pin matches) or downloading it again.

    Under a lock file: the actors of one node start together, and without it each would
    download the model and replace the copy another one is loading.
    """
    with _node_lock(target):
        if expected is not None and target.exists():
            cached = sha256_path(target)
            if cached == expected.strip().lower():
                return cached
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise WeightsFetchError(
                f"weights {uri!r} not found; check the URI and that the storage_options give "
                "access to it"
            ) from None
        is_dir = info.get("type") == "directory"
        tmp = _temp_beside(target, is_dir)
        try:
            _download(fs, path, uri, is_dir, tmp)
            sha = sha256_path(tmp)
            verify(sha)  # before publishing: a mismatching download never reaches the cache
            _publish(tmp, target, sha)
        finally:
            _remove(tmp)  # a no-op once published
        return sha


def _temp_beside(target: Path, is_dir: bool) -> Path:
    """A fresh temporary file or folder in ``target``'s folder, so that rename() is atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."  # a dot-name: never mistaken for a cached model
    if is_dir:
        return Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=".part"))
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=".part")
    os.close(handle)
    return Path(name)


def _download(fs: fsspec.AbstractFileSystem, path: str, uri: str, is_dir: bool, tmp: Path) -> None:
    """Copy a remote file, or every file under a remote folder, to the local ``tmp``."""
    if not is_dir:
        _copy(fs, path, tmp)
        return
    count = 0
    for remote in sorted(fs.find(path)):
        relative = posixpath.relpath(remote, path)
        # Dot-names are outside sha256_tree: skipping them keeps what is loaded == what is pinned.
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        _copy(fs, remote, tmp / relative)
        count += 1
    if count == 0:
        raise WeightsFetchError(f"weights folder {uri!r} holds no files; check the URI")


def _copy(fs: fsspec.AbstractFileSystem, remote: str, local: Path) -> None:
    with fs.open(remote, "rb") as source, open(local, "wb") as sink:
        shutil.copyfileobj(source, sink, CHUNK_BYTES)


def _publish(tmp: Path, target: Path, sha: str) -> None:
    """Rename ``tmp`` to ``target``; a file replaces atomically, a folder replaces the old one."""
    # rename() cannot replace a non-empty folder (or a file by a folder): move the old aside.
    if (tmp.is_dir() or target.is_dir()) and os.path.lexists(target):
        aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(target, aside)
        _remove(aside)
    try:
        os.replace(tmp, target)
    except OSError:
        # Another process (a second actor on this node) published first: fine if identical.
        if not target.exists() or sha256_path(target) != sha:
            raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
