"""Turn a decision into ``CheckResponse`` bytes, the only thing Envoy reads back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from google.protobuf import struct_pb2

from extauthz._pb.envoy.config.core.v3 import base_pb2
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

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
    remove: Sequence[str] = (),
    *,
    managed: Sequence[str] = IDENTITY_HEADERS,
    metadata: Metadata | None = None,
    remove_query_params: Sequence[str] = (),
) -> bytes:
    """An OK CheckResponse that sets ``identity_headers`` (overwriting) and strips the other
    ``managed`` header names, so that no client-supplied copy of one reaches the upstream.

    ``remove`` names more request headers to strip (x-forwarded-client-cert, a consumed token);
    ``remove_query_params`` query parameters (a consumed token: ``query_parameters_to_remove``,
    Envoy removes every occurrence of each name from the upstream ``:path``).
    """
    resp = ext.CheckResponse()
    resp.status.code = OK
    ok = resp.ok_response
    set_names = set()
    for key, value in identity_headers:
        ok.headers.append(_header(key, value))
        set_names.add(key)
    # Envoy applies headers_to_remove after the headers it sets: only remove what we don't set.
    ok.headers_to_remove.extend(
        dict.fromkeys(h for h in (*managed, *remove) if h not in set_names)
    )
    ok.query_parameters_to_remove.extend(dict.fromkeys(remove_query_params))
    if metadata:
        _set_metadata(resp.dynamic_metadata, metadata)
    return resp.SerializeToString()


# A cached decision keeps its response prepared: every field encoded except the per-request
# decision id (in dynamic_metadata, and in a deny's header and body). ``Prepared.finish`` adds the
# id inside the same two length-delimited fields (entries appended to the encoded content, so each
# field still occurs once: no parser has to merge messages). On a cache hit that is ~1.4 us for an
# allow instead of ~7 us to build the response whole (CPU time; bench/cache_cost.py has the effect on
# checks/s); on a miss, preparing then finishing costs ~2 us more than one build.
_FIELD = ext.CheckResponse.DESCRIPTOR.fields_by_name
_DENIED_FIELD = _FIELD["denied_response"].number
_METADATA_FIELD = _FIELD["dynamic_metadata"].number


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _frame(field_number: int, content: bytes) -> bytes:
    """One length-delimited field (wire type 2)."""
    return _varint(field_number << 3 | 2) + _varint(len(content)) + content


# Decision ids are 32 hex digits (decision.new_decision_id). ``Prepared`` encodes its response
# once (``split``, when it goes into the decision cache) with this stand-in for the id, a
# random one no client can know (so no header, claim or
# path copied into the response can hold it), and keeps the bytes around each occurrence: a hit's
# response is then the id joined into those parts (~0.3 us), where building the deny's header and
# JSON body with protobuf and json took ~6 us (bench/run.py asgi --path /admin/users).
ID_LENGTH = 32
_STAND_IN = os.urandom(ID_LENGTH // 2).hex()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A CheckResponse encoded but for its decision id."""

    head: bytes  # complete fields: status, and ok_response for an allow
    metadata: bytes  # dynamic_metadata content, without decision_id
    denied: bytes | None = None  # denied_response content without the id header and body
    http_status: int = 0
    reason: str = ""
    # The response with the stand-in id, split at it (None: build it each time).
    parts: tuple[bytes, ...] | None = field(default=None, compare=False, repr=False)

    def split(self) -> Prepared:
        """This response with its parts kept (what a cache entry holds: each hit then joins its
        id into them). A response answered once (no cache) is not split: that costs more than
        one ``build``."""
        if self.parts is not None:
            return self
        parts = tuple(self.build(_STAND_IN).split(_STAND_IN.encode()))
        # the id goes into the metadata, and a deny's header and body: 1 or 3 places
        if len(parts) != (2 if self.denied is None else 4):
            return self
        return replace(self, parts=parts)

    def finish(self, decision_id: str) -> bytes:
        parts = self.parts
        if (
            parts is not None
            and len(decision_id) == ID_LENGTH
            and decision_id.isascii()
            and decision_id.isalnum()  # nothing JSON or protobuf would have to escape
        ):
            return decision_id.encode().join(parts)
        return self.build(decision_id)

    def build(self, decision_id: str) -> bytes:
        """The response encoded whole, for any decision id."""
        out = [self.head]
        if self.denied is not None:
            extra = ext.DeniedHttpResponse(
                headers=[_header("x-extauthz-decision-id", decision_id)],
                body=json.dumps(
                    {"decision_id": decision_id, "status": self.http_status, "reason": self.reason},
                    ensure_ascii=True,
                    separators=(",", ":"),
                ),
            )
            out.append(_frame(_DENIED_FIELD, self.denied + extra.SerializeToString()))
        out.append(_frame(_METADATA_FIELD, self.metadata + _decision_id_entry(decision_id)))
        return b"".join(out)


def _decision_id_entry(decision_id: str) -> bytes:
    """Struct content holding just ``decision_id`` (protobuf's encoder: faster than Python's)."""
    md = struct_pb2.Struct()
    md.fields["decision_id"].string_value = decision_id
    return md.SerializeToString()


def _metadata_content(metadata: Metadata | None) -> bytes:
    """Struct content of ``metadata`` (None values left out; the decision id comes later)."""
    md = struct_pb2.Struct()
    if metadata:
        _set_metadata(md, {k: v for k, v in metadata.items() if k != "decision_id"})
    return md.SerializeToString()


def prepare_allow(
    identity_headers: Sequence[tuple[str, str]],
    remove: Sequence[str] = (),
    *,
    managed: Sequence[str] = IDENTITY_HEADERS,
    metadata: Metadata | None = None,
    remove_query_params: Sequence[str] = (),
) -> Prepared:
    return Prepared(
        head=allow(identity_headers, remove, managed=managed, remove_query_params=remove_query_params),
        metadata=_metadata_content(metadata),
    )


def prepare_deny(
    http_status: int,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    metadata: Metadata | None = None,
) -> Prepared:
    head = ext.CheckResponse()
    head.status.code = _GRPC_CODE_FOR_HTTP.get(http_status, PERMISSION_DENIED)
    head.status.message = reason
    denied = ext.DeniedHttpResponse()
    denied.status.code = http_status  # type: ignore[assignment]
    denied.headers.append(_header("content-type", "application/json"))
    for key, value in extra_headers:
        denied.headers.append(_header(key, value))
    return Prepared(
        head=head.SerializeToString(),
        metadata=_metadata_content(metadata),
        denied=denied.SerializeToString(),
        http_status=http_status,
        reason=reason,
    )


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
    return prepare_deny(http_status, reason, extra_headers, metadata=metadata).finish(decision_id)


# A last-resort answer that needs no work at all: used when even building a response failed.
STATIC_DENY = deny(403, "unavailable", "internal_error")
