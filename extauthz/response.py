"""Turn a decision into ``CheckResponse`` bytes, the only thing Envoy reads back."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2

from extauthz._pb.envoy.config.core.v3 import base_pb2
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.identity import Identity

# google.rpc.Code values.
OK = 0
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16

_GRPC_CODE_FOR_HTTP = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# The identity headers this service sets on allowed requests (the default of the
# ``identity_headers`` setting). A client-supplied copy never reaches the upstream: it is
# overwritten when we set the header and removed when we don't.
IDENTITY_HEADERS = ("x-spiffe-id",)

# What an identity header may carry (the ``identity_headers`` setting maps names to these).
IDENTITY_FIELDS: dict[str, Callable[[Identity], str]] = {
    "peer": lambda i: str(i.peer) if i.peer is not None else "",  # spiffe://td/path
    "peer_trust_domain": lambda i: i.peer.trust_domain if i.peer is not None else "",
    "request_principal": lambda i: i.request_principal,  # iss/sub of the validated token
    "token_issuer": lambda i: i.token.issuer if i.token is not None else "",
    "token_subject": lambda i: i.token.subject if i.token is not None else "",
}
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "te"})


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """Which identity headers an allowed request carries upstream, and from which field."""

    fields: tuple[tuple[str, str], ...] = (("x-spiffe-id", "peer"),)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> IdentityHeaders:
        out = []
        for name, fieldname in mapping.items():
            n = str(name).lower()
            if not _HEADER_NAME.fullmatch(n) or n in _RESERVED:
                raise ValueError(f"identity header {name!r}: not a header name we may set")
            if fieldname not in IDENTITY_FIELDS:
                raise ValueError(
                    f"identity header {name!r}: field {fieldname!r} is not one of "
                    + ", ".join(IDENTITY_FIELDS)
                )
            out.append((n, str(fieldname)))
        return cls(tuple(out))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    def values(self, identity: Identity) -> tuple[tuple[str, str], ...]:
        """The headers to set for ``identity``: those whose field has a value."""
        out = []
        for name, fieldname in self.fields:
            value = IDENTITY_FIELDS[fieldname](identity)
            if value and value.isprintable() and value.isascii():  # never a CR/LF or NUL
                out.append((name, value))
        return tuple(out)


# Values of ``dynamic_metadata``: Envoy puts them under ``envoy.filters.http.ext_authz`` for
# access logs (``%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%``).
Metadata = Mapping[str, str | bool | int | None]


def _set_metadata(struct: struct_pb2.Struct, metadata: Metadata) -> None:
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, bool):
            struct.fields[key].bool_value = value
        elif isinstance(value, int):
            struct.fields[key].number_value = value
        else:
            struct.fields[key].string_value = value


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def allow(
    identity_headers: Sequence[tuple[str, str]],
    *,
    managed: Sequence[str] = IDENTITY_HEADERS,
    metadata: Metadata | None = None,
) -> bytes:
    """An OK CheckResponse that sets ``identity_headers`` (overwriting) and strips the other
    ``managed`` header names, so that no client-supplied copy of one reaches the upstream."""
    resp = ext.CheckResponse()
    resp.status.code = OK
    ok = resp.ok_response
    set_names = set()
    for key, value in identity_headers:
        ok.headers.append(_header(key, value))
        set_names.add(key)
    # Envoy applies headers_to_remove after the headers it sets: only remove what we don't set.
    ok.headers_to_remove.extend(h for h in managed if h not in set_names)
    if metadata:
        _set_metadata(resp.dynamic_metadata, metadata)
    return resp.SerializeToString()


def deny(
    http_status: int,
    decision_id: str,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    metadata: Metadata | None = None,
) -> bytes:
    """A deny CheckResponse: non-zero gRPC status, ``denied_response`` with a small JSON body.

    The body names the decision (so a user can find the audit record) and a coarse reason; it
    never carries internals.
    """
    resp = ext.CheckResponse()
    resp.status.code = _GRPC_CODE_FOR_HTTP.get(http_status, PERMISSION_DENIED)
    resp.status.message = reason
    denied = resp.denied_response
    denied.status.code = http_status  # type: ignore[assignment]
    denied.headers.append(_header("content-type", "application/json"))
    denied.headers.append(_header("x-extauthz-decision-id", decision_id))
    for key, value in extra_headers:
        denied.headers.append(_header(key, value))
    denied.body = json.dumps(
        {"decision_id": decision_id, "status": http_status, "reason": reason},
        ensure_ascii=True,
        separators=(",", ":"),
    )
    if metadata:
        _set_metadata(resp.dynamic_metadata, metadata)
    return resp.SerializeToString()


# A last-resort answer that needs no work at all: used when even building a response failed.
STATIC_DENY = deny(403, "unavailable", "internal_error")
