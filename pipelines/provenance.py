"""Provenance: code version, package versions and the run record."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from pipelines.manifest_loader import LoadedManifest

PACKAGES = (
    "synthfill",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "albumentations",
    "torch",
    "ray",
    "pyarrow",
    "pandas",
    "fsspec",
    "s3fs",
    "pydantic",
    "pyyaml",
)
# storage_options values recorded as given; every other value is redacted (credentials hide
# under many names: key, secret, token, headers, connection strings, SAS URLs...).
_SAFE_OPTIONS = {
    "endpoint_url",
    "region_name",
    "anon",
    "use_ssl",
    "requester_pays",
    "client_kwargs",
    "config_kwargs",
    "project",
    "version_aware",
}
_REDACTED = "<redacted>"


@cache
def code_version() -> str:
    """The package version, plus the git commit (and ``-dirty``) when run from a checkout."""
    try:
        version = metadata.version("synthfill")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = _git(
            root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "pipelines",
            "inpaint_ops",
            "cli.py",
        )
    except (OSError, subprocess.CalledProcessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
    )
    return out.stdout.strip()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a result."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """storage_options with every value outside a short allowlist replaced by a placeholder."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in _SAFE_OPTIONS:
            out[key] = _REDACTED
        elif isinstance(value, dict):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def redact_override(item: str) -> str:
    """A ``--set`` override as recorded: values under storage_options are hidden."""
    key, _, value = item.partition("=")
    if "storage_options" not in key.split("."):
        return item
    last = key.split(".")[-1]
    return f"{key}={value}" if last in _SAFE_OPTIONS else f"{key}={_REDACTED}"


def manifest_record(loaded: LoadedManifest) -> dict[str, Any]:
    """The resolved manifest as recorded (credentials redacted) with how it was given."""
    dumped = loaded.manifest.model_dump(mode="json")
    for section in ("source", "output"):
        dumped[section]["storage_options"] = redact(dumped[section]["storage_options"])
    overrides = [redact_override(item) for item in loaded.overrides]
    return {"path": loaded.path, "overrides": overrides, "resolved": dumped}


def environment() -> dict[str, Any]:
    """Interpreter and platform facts for the run record."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }
