"""Weights safety: hashes, pins, and loaders that never run code hidden in a checkpoint.

A pickle-based checkpoint (``.pt .pth .bin .ckpt``) can carry a ``__reduce__`` payload that runs
when it is unpickled; it is read here only with torch's weights-only unpickler, which refuses such
payloads before executing them. safetensors files hold tensors and a string header only. A
TorchScript archive is code by design, so it is loaded only when its sha256 matches a pin.

Pixels/model layer: no fsspec, ray or pyarrow; torch and safetensors are imported inside the
functions that need them, so importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

CHUNK_BYTES = 1 << 20
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class WeightsError(ValueError):
    """Weights that must not or cannot be loaded: the message says which file, why, and what to do."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (OSError if it cannot be read)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """Hex sha256 of a folder: over the sorted (relative posix path, file sha256) of its files.

    Every regular file counts (symlinks to files are followed, as in a Hugging Face cache
    snapshot); names starting with "." are skipped at any level (``.git``, ``.cache``, temp
    files). Creation order, timestamps and the folder's own location do not change the hash.
    """
    root = Path(path)
    if not root.is_dir():
        raise WeightsError(f"{root}: not a folder, so it has no tree hash; pass a folder")
    entries = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in files:
            file = Path(folder, name)
            if name.startswith(".") or not file.is_file():
                continue
            entries.append((file.relative_to(root).as_posix(), sha256_file(file)))
    digest = hashlib.sha256()
    for relative, file_hash in sorted(entries):
        # NUL cannot occur in a path, so the encoding of the list is unambiguous.
        digest.update(relative.encode("utf-8", "surrogateescape") + b"\0" + file_hash.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """``sha256_tree`` for a folder, ``sha256_file`` for a file."""
    return sha256_tree(path) if Path(path).is_dir() else sha256_file(path)


def check_pin(actual: str, expected: str | None, *, what: str, required: bool) -> None:
    """Raise WeightsError unless ``actual`` matches the pin ``expected`` (case-insensitive).

    ``what`` names the weights in messages (e.g. "TorchScript weights /models/lama.pt").
    With ``required`` a missing pin is an error: the weights can run code when loaded.
    """
    if expected is None:
        if required:
            raise WeightsError(
                f"{what} can run code when loaded; pin it with weights_sha256: {actual} "
                "(after checking the file comes from a source you trust)"
            )
        return
    if not _SHA256_HEX.fullmatch(expected.strip().lower()):
        raise WeightsError(
            f"{what}: weights_sha256 {expected!r} is not a sha256 (64 hex characters); copy "
            "the full hash of the file you trust (`sha256sum FILE`)"
        )
    if expected.strip().lower() != actual.lower():
        raise WeightsError(
            f"{what} has sha256 {actual.lower()} but weights_sha256 pins "
            f"{expected.strip().lower()}: the file is not the one pinned; use the pinned file, "
            "or update weights_sha256 once you have checked where this one came from"
        )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors by name from a ``.safetensors`` file or a torch checkpoint (tensors only).

    Torch checkpoints are read with ``weights_only=True``: a file holding other Python objects
    is refused before anything in it runs. A ``{"state_dict": {...}}`` wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; check the weights path")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        loaded = _load_safetensors(path)
    elif suffix in PICKLE_SUFFIXES:
        loaded = _load_torch_tensors_only(path)
    else:
        raise WeightsError(
            f"{path}: unknown weights format {suffix or '(no suffix)'!r}; accepted: "
            f"{', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)} (safetensors preferred)"
        )
    return _as_tensor_dict(loaded, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except SafetensorError as exc:
        raise WeightsError(
            f"{path}: not a valid safetensors file ({exc}); re-download or re-export it"
        ) from None


def _load_torch_tensors_only(path: Path) -> object:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path}: the checkpoint contains Python objects other than tensors "
            f"({_unpickler_reason(exc)}); it was NOT unpickled. Convert it to safetensors "
            "(in a sandbox: load it with full unpickling, save its tensors with "
            "safetensors.torch.save_file)"
        ) from None
    except (RuntimeError, EOFError) as exc:  # not a zip archive, truncated, corrupt
        raise WeightsError(
            f"{path}: not a readable torch checkpoint ({_first_sentence(exc)}); nothing in it was "
            "unpickled. Re-download it, or convert the weights to safetensors"
        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        return loaded["state_dict"]
    return loaded


def _unpickler_reason(exc: Exception) -> str:
    # torch's message is a page of advice about weights_only=False; keep only the cause.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            # Drop torch's "Please use add_safe_globals" advice: allowlisting is not the fix.
            cause = line.removeprefix("WeightsUnpickler error:").split(" Please use")[0]
            return cause.strip().rstrip(".")
    return lines[0] if lines else type(exc).__name__


def _first_sentence(exc: BaseException) -> str:
    # torch's errors go on for lines of generic advice; the first sentence is the cause.
    text = str(exc).strip()
    return text.split(". ")[0].splitlines()[0].rstrip(".") if text else type(exc).__name__


def _as_tensor_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if not isinstance(loaded, dict):
        raise WeightsError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict (name -> tensor); "
            "save model.state_dict() instead"
        )
    bad = [k for k, v in loaded.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise WeightsError(
            f"{path}: not a flat state dict: entries {bad[:5]!r} are not name -> tensor; "
            "save model.state_dict() (or a safetensors file) instead"
        )
    return loaded


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a safetensors header ({} when it has none)."""
    from safetensors import SafetensorError, safe_open

    try:
        # framework="numpy": reading the header needs no torch.
        with safe_open(str(path), framework="numpy") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise WeightsError(
            f"{path}: cannot read the safetensors header ({exc}); check the file is a "
            "complete .safetensors file"
        ) from None


def load_torchscript(
    path: Path, device: str, *, expected_sha256: str | None
) -> torch.jit.ScriptModule:
    """A TorchScript module in eval mode, loaded only after its sha256 matches the pin.

    An archive can carry arbitrary code, so the pin is mandatory and is checked before
    ``torch.jit.load`` sees the archive. The bytes are read once, hashed, and those same bytes
    are loaded: a file swapped between the check and the load cannot slip through.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: TorchScript file not found; check the weights path")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    check_pin(actual, expected_sha256, what=f"TorchScript weights {path}", required=True)
    import torch

    try:
        module = torch.jit.load(io.BytesIO(data), map_location=device)
    except RuntimeError as exc:
        raise WeightsError(
            f"{path}: matches its pin but is not a loadable TorchScript archive "
            f"({_first_sentence(exc)}); "
            "export it with torch.jit.save, with a torch version not newer than this one"
        ) from None
    return module.eval()
