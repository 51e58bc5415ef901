"""Provenance: code version, package versions and the run record."""

from __future__ import annotations

import json
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipelines.credentials import is_reference
from pipelines.manifest_loader import LoadedManifest

PACKAGES = (
    "synthfill",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "albumentations",
    "torch",
    "safetensors",
    "diffusers",
    "transformers",
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
    """storage_options with every value outside a short allowlist replaced by a placeholder.

    A value that is only a ``${NAME}`` reference is kept: it says which variable held the
    credential without holding it.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        if is_reference(value):
            out[key] = value
        elif key not in _SAFE_OPTIONS:
            out[key] = _REDACTED
        elif isinstance(value, dict):
            out[key] = redact(value)
        else:
            out[key] = value
    return out


def redact_override(item: str) -> str:
    """A ``--set`` override as recorded: values under storage_options are hidden.

    Both ``--set source.storage_options.key=...`` and a whole section given as YAML
    (``--set 'inpainter={..., storage_options: {...}}'``) are covered.
    """
    key, _, value = item.partition("=")
    if "storage_options" in key.split("."):
        return f"{key}={_redact_option_value(key.split('.')[-1], value)}"
    if "storage_options" not in value:
        return item
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return f"{key}={_REDACTED}"  # unreadable, and it names storage_options: hide it all
    return f"{key}={json.dumps(_redact_nested(parsed), sort_keys=True)}"


def _redact_option_value(name: str, value: str) -> str:
    """One value given for a storage option (or a whole mapping of them) as recorded."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, dict):  # e.g. client_kwargs={headers: {Authorization: ...}}
        options = parsed if name == "storage_options" else {name: parsed}
        shown = redact(options)
        return json.dumps(shown if name == "storage_options" else shown[name], sort_keys=True)
    return value if name in _SAFE_OPTIONS or is_reference(value) else _REDACTED


def _redact_nested(node: Any) -> Any:
    """Every ``storage_options`` mapping inside ``node`` redacted."""
    if isinstance(node, list):
        return [_redact_nested(v) for v in node]
    if not isinstance(node, dict):
        return node
    return {
        k: redact(v) if k == "storage_options" and isinstance(v, dict) else _redact_nested(v)
        for k, v in node.items()
    }


def manifest_record(loaded: LoadedManifest) -> dict[str, Any]:
    """The resolved manifest as recorded (credentials redacted) with how it was given."""
    dumped = _redact_nested(loaded.manifest.model_dump(mode="json"))
    overrides = [redact_override(item) for item in loaded.overrides]
    return {"path": loaded.path, "overrides": overrides, "resolved": dumped}


def environment() -> dict[str, Any]:
    """Interpreter and platform facts for the run record."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
    }
