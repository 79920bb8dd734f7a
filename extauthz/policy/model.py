"""The policy model: Istio security resources as parsed from YAML, before compilation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ALLOW = "ALLOW"
DENY = "DENY"
AUDIT = "AUDIT"
ACTIONS = (ALLOW, DENY, AUDIT)


@dataclass(frozen=True, slots=True)
class Where:
    """Where a resource or rule was written: file and 1-based line."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Source:
    """One ``from[].source``: every set field must match; values of a field are alternatives."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """One ``to[].operation``."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """One ``when`` entry."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    """A rule matches when any source, any operation and every condition match.

    An absent (or empty) ``from`` / ``to`` matches anything.
    """

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()
    where: Where | None = None


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    action: str
    rules: tuple[Rule, ...]  # no rules: the policy matches nothing
    selector: Mapping[str, str] | None = None
    dry_run: bool = False
    where: Where | None = None

    @property
    def ref(self) -> str:
        """``namespace/name``, as decisions and audit records name it."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Resource:
    """A RequestAuthentication or PeerAuthentication, kept as validated data."""

    kind: str
    name: str
    namespace: str
    spec: Mapping[str, Any]
    selector: Mapping[str, str] | None = None
    where: Where | None = None


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything one load of the policy directory produced."""

    authorization: tuple[AuthorizationPolicy, ...] = ()
    request_authentication: tuple[Resource, ...] = ()
    peer_authentication: tuple[Resource, ...] = ()
    root_namespace: str = "istio-system"
    files: tuple[str, ...] = ()
