"""Reading a manifest file: strict YAML, ``--set`` overrides, clear errors, resolved paths."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.errors import ManifestError
from pipelines.manifest import Manifest, resolve_uri
from pipelines.strict_yaml import YamlError, load_yaml


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest with local paths resolved, plus what provenance needs."""

    manifest: Manifest
    path: str
    fingerprint: str
    overrides: tuple[str, ...]


def load_manifest(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedManifest:
    """Load, override, validate and resolve; raise ManifestError with the field path."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ManifestError("<file>", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = load_yaml(text, source=str(path))
    except YamlError as exc:
        raise ManifestError("<yaml>", str(exc), "use plain YAML: no tags, unique keys") from None
    if not isinstance(data, dict):
        raise ManifestError("<root>", "a manifest is a YAML mapping (name:, seed:, source:, ...)")
    for item in overrides:
        apply_override(data, item)
    manifest = validate_manifest(data)
    resolved = resolve_paths(manifest, path.parent.resolve())
    return LoadedManifest(resolved, str(path), manifest.fingerprint(), tuple(overrides))


def validate_manifest(data: dict[str, Any]) -> Manifest:
    """Validate a mapping; the first error becomes a ManifestError naming the field."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise _manifest_error(exc) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.0.c=value`` override in place; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ManifestError("--set", f"{item!r} is not KEY=VALUE", "e.g. --set compute.actors=4")
    try:
        value = load_yaml(raw, source=f"--set {key}")
    except YamlError as exc:
        raise ManifestError(key, str(exc)) from None
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, ".".join(parts[: depth + 1]))
    _assign(node, parts[-1], value, key)


def _step(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        index = _index(node, part, where)
        return node[index]
    if not isinstance(node, dict):
        raise ManifestError(where, "cannot descend into a scalar value")
    return node.setdefault(part, {})


def _assign(node: Any, part: str, value: Any, where: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ManifestError(where, "cannot set a field inside a scalar value")


def _index(node: list[Any], part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ManifestError(
            where, f"list index {part!r} out of range (the list has {len(node)} items)"
        )
    return int(part)


def resolve_paths(manifest: Manifest, base: Path) -> Manifest:
    """Return a copy whose local relative paths are absolute (relative to the manifest file)."""
    source = manifest.source
    updates: dict[str, Any] = {"uri": resolve_uri(source.uri, base)}
    if source.annotations:
        updates["annotations"] = resolve_uri(source.annotations, base)
    if source.inventory:
        updates["inventory"] = resolve_uri(source.inventory, base)
    masks = [
        m.model_copy(update={"uri": resolve_uri(m.uri, base)}) if hasattr(m, "uri") else m
        for m in manifest.masks
    ]
    output = manifest.output.model_copy(update={"uri": resolve_uri(manifest.output.uri, base)})
    inpainters = [
        spec.model_copy(update={"weights": resolve_uri(spec.weights, base)})
        if spec.weights_uri() is not None
        else spec
        for spec in manifest.inpainters
    ]
    return manifest.model_copy(
        update={
            "source": source.model_copy(update=updates),
            "masks": masks,
            "inpainter": inpainters if isinstance(manifest.inpainter, list) else inpainters[0],
            "output": output,
        }
    )


# Errors that only say "this branch of `one | list of them` does not fit the input's shape".
_WRONG_SHAPE = {"dict_type", "model_attributes_type", "list_type", "model_type"}


def _readable(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The errors a user can act on, with pydantic's union branch names dropped from paths."""
    real = [
        e
        for e in errors
        if not (e["type"] in _WRONG_SHAPE and e["loc"] and _is_branch(e["loc"][-1]))
    ]
    return [{**e, "loc": tuple(p for p in e["loc"] if not _is_branch(p))} for e in real or errors]


def _is_branch(part: object) -> bool:
    """A path segment naming a union branch, e.g. ``tagged-union[Telea,...]`` or ``list[...]``."""
    return isinstance(part, str) and part.endswith("]") and "[" in part


def _manifest_error(exc: ValidationError) -> ManifestError:
    errors = _readable(exc.errors(include_url=False))
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"]) or "<root>"
    hint = ""
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), sorted(_all_field_names()), n=1)
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else "remove it; `pipeline schema` lists the fields"
        )
        return ManifestError(where, "unknown field", hint)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        hint = "see `pipeline schema` for the kinds and their fields"
    more = len(errors) - 1
    message = err["msg"] + (f" (and {more} more error{'s' * (more > 1)})" if more else "")
    return ManifestError(where, message, hint)


@cache
def _all_field_names() -> frozenset[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            names.update(node.get("properties", {}).keys())
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(Manifest.model_json_schema())
    return frozenset(names)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of manifests (editors can validate YAML with it)."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "synthfill manifest"
    return schema
