"""Turn a decision into ``CheckResponse`` bytes, the only thing Envoy reads back."""

from __future__ import annotations

import json
from collections.abc import Sequence

from extauthz._pb.envoy.config.core.v3 import base_pb2
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

# google.rpc.Code values.
OK = 0
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
UNAUTHENTICATED = 16

_GRPC_CODE_FOR_HTTP = {400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# The identity headers this service sets on allowed requests. A client-supplied copy never
# reaches the upstream: it is overwritten when we set the header and removed when we don't.
IDENTITY_HEADERS = ("x-spiffe-id",)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
    )


def allow(identity_headers: Sequence[tuple[str, str]], remove: Sequence[str] = ()) -> bytes:
    """An OK CheckResponse that sets ``identity_headers`` (overwriting) and strips the others.

    ``remove`` names more request headers to strip (x-forwarded-client-cert, a consumed token).
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
        dict.fromkeys(h for h in (*IDENTITY_HEADERS, *remove) if h not in set_names)
    )
    return resp.SerializeToString()


def deny(
    http_status: int,
    decision_id: str,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
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
    return resp.SerializeToString()


# A last-resort answer that needs no work at all: used when even building a response failed.
STATIC_DENY = deny(403, "unavailable", "internal_error")
