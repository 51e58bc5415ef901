"""YAML for manifests: safe, small, unambiguous.

PyYAML's SafeLoader still has traps for a config language (measured in RELIABILITY.md): duplicate
keys silently keep the last value, ``NO`` becomes False, ``012345`` becomes 5349, and a few hundred
bytes of aliases expand to gigabytes. This loader rejects duplicates and alias bombs and resolves
only unambiguous scalars (YAML 1.2 booleans, decimal integers); anything else stays a string, so
the schema reports it with the field's path instead of accepting a surprising value.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

MAX_BYTES = 1_000_000
MAX_NODES = 100_000  # after alias expansion; a real manifest has a few hundred

_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$")


class YamlError(ValueError):
    """The text is not an acceptable manifest document (the message says where and why)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with unambiguous scalars and no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise YamlError(f"duplicate key {key!r} at line {line} (first at line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _install_resolvers() -> None:
    # Copy before editing: the resolver table is a class attribute shared with SafeLoader.
    table = {
        k: [r for r in v if r[0] not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int")]
        for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _StrictLoader.yaml_implicit_resolvers = table
    _StrictLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
    _StrictLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))


_install_resolvers()
_StrictLoader.add_constructor("tag:yaml.org,2002:map", _StrictLoader.construct_mapping)


def load_yaml(text: str | bytes, *, source: str = "<string>") -> Any:
    """Parse one YAML document with the rules above; raise YamlError naming ``source``."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"{source}: {len(text)} bytes is larger than the {MAX_BYTES}-byte limit")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlError(
                f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except YamlError as exc:
        raise YamlError(f"{source}: {exc}") from None
    except RecursionError:
        raise YamlError(f"{source}: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise YamlError(f"{source}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse documents whose aliases would expand past MAX_NODES (a 'billion laughs' bomb)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:  # aliases share node objects: count each subtree once, expand by use
            return sizes[id(node)]
        sizes[id(node)] = MAX_NODES + 1  # a self-referencing alias counts as too big
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = min(total, MAX_NODES + 1)
        return sizes[id(node)]

    if size(root) > MAX_NODES:
        raise YamlError(f"document expands to more than {MAX_NODES} nodes through aliases: refused")
