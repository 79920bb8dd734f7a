"""The policy model: Istio security resources as parsed from YAML, before compilation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    # ``namespace/serviceaccount``: a bare ``sa`` is resolved to the policy's namespace at load
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    trust_domains: tuple[str, ...] = ()
    not_trust_domains: tuple[str, ...] = ()


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


# ----------------------------------------------------------------------------- authentication
# RequestAuthentication and PeerAuthentication as the loader read them (once, strictly): identity
# compiles these, the decision cache keys on them; neither reads the YAML again.


@dataclass(frozen=True, slots=True)
class FromHeader:
    """One ``jwtRules[].fromHeaders[]`` entry, as written (the token code vets the name)."""

    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    """One ``jwtRules[].outputClaimToHeaders[]`` entry, as written."""

    header: str
    claim: str


@dataclass(frozen=True, slots=True)
class JwtRuleSpec:
    """One ``jwtRules[]`` entry. Absent fields hold their empty value."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | Mapping[str, Any] | None = None  # a JSON string or the same document as a mapping
    jwks_uri: str = ""
    timeout: str | None = None  # a duration as written ("5s", "500ms")
    from_headers: tuple[FromHeader, ...] = ()
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    forward_original_token: bool = False


@dataclass(frozen=True, slots=True)
class RequestAuthentication:
    name: str
    namespace: str
    jwt_rules: tuple[JwtRuleSpec, ...] = ()
    selector: Mapping[str, str] | None = None
    where: Where | None = None


UNSET = "UNSET"
MTLS_MODES = (UNSET, "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    name: str
    namespace: str
    mtls_mode: str = UNSET  # one of MTLS_MODES
    port_level_mtls: Mapping[str, str] = field(default_factory=dict)  # port (as written) -> mode
    selector: Mapping[str, str] | None = None
    where: Where | None = None

    @property
    def spec(self) -> Mapping[str, Any]:
        """``mtls`` and ``portLevelMtls`` in Istio's shape, rebuilt from the typed fields (tools)."""
        out: dict[str, Any] = {"mtls": {"mode": self.mtls_mode}}
        if self.port_level_mtls:
            out["portLevelMtls"] = {port: {"mode": mode} for port, mode in self.port_level_mtls.items()}
        return out


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Everything one load of the policy directory produced."""

    authorization: tuple[AuthorizationPolicy, ...] = ()
    request_authentication: tuple[RequestAuthentication, ...] = ()
    peer_authentication: tuple[PeerAuthentication, ...] = ()
    root_namespace: str = "istio-system"
    files: tuple[str, ...] = ()
