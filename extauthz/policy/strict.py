"""Strict YAML reading for policy files: ``PolicyError``, a loader that records lines and refuses
duplicate keys, and typed accessors whose errors name file, line, resource and field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import yaml

from extauthz.policy.model import Where


class PolicyError(Exception):
    """A policy file that cannot be loaded. ``str()`` reads ``file:line: [resource] reason``."""

    def __init__(self, where: Where, reason: str, resource: str = "") -> None:
        self.where = where
        self.reason = reason
        self.resource = resource
        label = f" {resource}:" if resource else ""
        super().__init__(f"{where}:{label} {reason}")


class Map(dict[str, Any]):
    """A YAML mapping that remembers the line it started on."""

    line: int = 0


class Seq(list[Any]):
    line: int = 0


# libyaml's parser when PyYAML has it (ten times faster on large policy sets); the constructors
# below, which record lines and refuse duplicate keys, run either way.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc]
    """A safe loader that records line numbers and refuses duplicate keys."""


def _construct_map(loader: _StrictLoader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    out = Map()
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)  # port numbers as keys (portLevelMtls: {8080: ...})
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None, None, f"mapping key {key!r} is not a string", key_node.start_mark
            )
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


def _construct_seq(loader: _StrictLoader, node: yaml.SequenceNode) -> Seq:
    out = Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def parse_yaml(text: str, name: str) -> list[Any]:
    try:
        return [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError(Where(name, line), f"YAML error: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(Where(name, 0), f"YAML error: {exc}") from exc
    except RecursionError as exc:  # "[[[[..." a few thousand deep: refuse, don't crash the reload
        raise PolicyError(Where(name, 0), "YAML error: nested too deeply") from exc


class Ctx:
    """Error context: which file and resource we are reading."""

    def __init__(self, file: str, resource: str) -> None:
        self.file = file
        self.resource = resource

    def error(self, node: Any, reason: str) -> PolicyError:
        return PolicyError(Where(self.file, getattr(node, "line", 0)), reason, self.resource)


def as_map(ctx: Ctx, parent: Any, field: str, value: Any) -> Map:
    if not isinstance(value, Map):
        raise ctx.error(parent, f"{field}: expected a mapping, got {type_name(value)}")
    return value


def as_list(ctx: Ctx, parent: Any, field: str, value: Any) -> Seq:
    if not isinstance(value, Seq):
        raise ctx.error(parent, f"{field}: expected a list, got {type_name(value)}")
    return value


def as_str(ctx: Ctx, parent: Any, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ctx.error(parent, f"{field}: expected a string, got {type_name(value)}")
    return value


def as_strings(ctx: Ctx, parent: Any, field: str, value: Any) -> tuple[str, ...]:
    seq = as_list(ctx, parent, field, value)
    out = []
    for item in seq:
        if not isinstance(item, str) or not item:
            raise ctx.error(seq, f"{field}: every value must be a non-empty string, got {item!r}")
        out.append(item)
    return tuple(out)


def type_name(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def check_fields(ctx: Ctx, node: Map, what: str, allowed: Iterable[str]) -> None:
    allowed_set = set(allowed)
    for key in node:
        if key not in allowed_set:
            raise ctx.error(
                node, f"{what}: unknown field {key!r} (known: {', '.join(sorted(allowed_set))})"
            )


def read_selector(ctx: Ctx, spec: Map) -> Mapping[str, str] | None:
    if "selector" not in spec:
        return None
    sel = as_map(ctx, spec, "selector", spec["selector"])
    check_fields(ctx, sel, "selector", ("matchLabels",))
    labels = as_map(ctx, sel, "selector.matchLabels", sel.get("matchLabels", Map()))
    out: dict[str, str] = {}
    for k, v in labels.items():
        out[k] = as_str(ctx, labels, f"selector.matchLabels.{k}", v)
    return MappingProxyType(out)
