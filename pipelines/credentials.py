"""Credentials in ``storage_options`` by reference: ``${NAME}`` is read from the environment.

A manifest travels far: Ray pickles the run plan (manifest included) to every worker and may
spill it to disk, and the run record stores the manifest. So a secret may appear in
``storage_options`` only as a reference, ``secret: ${S3_SECRET}``, resolved in each process at the
moment a filesystem is opened and never written back anywhere. Credentials the storage library
finds on its own (``AWS_*`` variables, ``AWS_PROFILE``, instance roles) need no mention at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pipelines.errors import RunError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Option names that hold secrets in s3fs, gcsfs, adlfs and HTTP clients, at any depth
# (client_kwargs, headers, s3_additional_kwargs): matched on the name without "_" or "-".
_SECRET_NAME = re.compile(
    r"secret|token|password|passwd|credential|authorization|privatekey|customerkey|"
    r"sas|connectionstring|accountkey|apikey"
)
# gcsfs's `token` also names an authentication method or a credentials file: not a secret.
_TOKEN_METHODS = frozenset({"anon", "google_default", "cloud", "browser"})


def is_reference(value: Any) -> bool:
    """True when ``value`` is exactly one ``${NAME}`` reference (safe to record as written)."""
    return isinstance(value, str) and _REFERENCE.fullmatch(value) is not None


def literal_secrets(options: Mapping[str, Any], where: str) -> list[str]:
    """Dotted names of options under ``where`` that hold a secret literally (not a reference)."""
    found = []
    for key, value in options.items():
        name = f"{where}.{key}"
        secret = is_secret_name(key)
        if isinstance(value, Mapping) and not (secret and value):  # a mapping named token: a key
            found += literal_secrets(value, name)
        elif secret and not _harmless(key, value):
            found.append(name)
    return found


def is_secret_name(key: str) -> bool:
    """True for option names that hold secrets (``secret``, ``aws_session_token``, ...)."""
    return _SECRET_NAME.search(key.lower().replace("_", "").replace("-", "")) is not None


def _harmless(key: str, value: Any) -> bool:
    if value is None or value == "" or isinstance(value, bool):
        return True
    if is_reference(value):  # only a whole reference: "abc${X}" would carry "abc"
        return True
    return key == "token" and isinstance(value, str) and _token_is_not_secret(value)


def _token_is_not_secret(value: str) -> bool:
    return value in _TOKEN_METHODS or value.endswith(".json")


def resolve(options: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``options`` with every ``${NAME}`` replaced by the variable's value from ``environ``.

    Raises RunError naming the variable (never a value) when it is not set.
    """
    return {key: _resolve_value(key, value, environ) for key, value in options.items()}


def _resolve_value(key: str, value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping):
        return resolve(value, environ)
    if isinstance(value, list):
        return [_resolve_value(key, v, environ) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise RunError(
                f"storage_options.{key} refers to ${{{name}}}, which is not set in this "
                "process's environment; export it where the pipeline runs (on a Ray cluster: "
                "on every node, e.g. in the node's service environment)"
            )
        return environ[name]

    return _REFERENCE.sub(lookup, value)


def access_hint(exc: BaseException) -> str:
    """What to check when the store refused us (empty for other errors)."""
    if not isinstance(exc, PermissionError):
        return ""
    return (
        "; check the credentials this process sees: AWS_* variables, AWS_PROFILE, an instance "
        "role, or ${NAME} references in storage_options (and that they may read/write there)"
    )
