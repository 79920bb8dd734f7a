"""The gRPC wire as Envoy speaks it to an ext_authz server: names, framing, ``grpc-timeout``.

Transports that parse gRPC themselves (h2corn) use these; grpcio does its own framing.
"""

from __future__ import annotations

import re

AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
CHECK_METHOD = "Check"
CHECK_PATH = f"/{AUTHZ_SERVICE}/{CHECK_METHOD}"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

# gRPC status codes used by the transports.
OK = 0
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
UNIMPLEMENTED = 12
INTERNAL = 13

_TIMEOUT_RE = re.compile(rb"^(\d{1,8})([HMSmun])$")
_TIMEOUT_UNIT = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_grpc_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (``250m``, ``1S``, ...) in seconds; None when absent or malformed."""
    m = _TIMEOUT_RE.match(value)
    if m is None:
        return None
    return int(m.group(1)) * _TIMEOUT_UNIT[m.group(2)]


def frame(message: bytes) -> bytes:
    """One uncompressed length-prefixed gRPC message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(body: bytes, limit: int = MAX_MESSAGE_BYTES) -> tuple[bytes | None, str | None]:
    """The one message of a unary request body, or (None, what is wrong with it)."""
    if len(body) < 5:
        return None, "truncated gRPC frame"
    flag = body[0]
    length = int.from_bytes(body[1:5], "big")
    if flag == 1:
        return None, "compressed gRPC message (no grpc-encoding is accepted)"
    if flag != 0:
        return None, "invalid gRPC frame flag"
    if length > limit:
        return None, f"gRPC message larger than {limit} bytes"
    if len(body) != 5 + length:
        return None, "truncated gRPC frame" if len(body) < 5 + length else "more than one gRPC message"
    return body[5:], None
