"""The request view: one immutable, normalised picture of an Envoy CheckRequest.

Everything after parsing (identity, policy, cache, audit) reads this view, never the proto.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, str] = MappingProxyType({})

# A longer path is refused (400): Envoy's default header limit is 60 KiB, real paths are short,
# and a long one is only a way to make every check cost more.
MAX_PATH_BYTES = 8 * 1024
# Characters allowed raw in a canonical path: RFC 3986 pchar plus "/" (no "#", "\", space, ...).
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# The same without ";" and "%": a path of only these needs no per-character or escape checks.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
# A Host/:authority: a DNS name (one trailing dot allowed) or a bracketed IPv6 literal, and an
# optional numeric port. No userinfo, no second port, no list: a backend may read those as the
# denied host while the matcher sees another string.
_AUTHORITY = re.compile(
    r"(?:(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_DOT_SEGMENT = re.compile(r"/\.\.?(?=/|$)")
# Characters never allowed raw in a path, each with its own reason (path_problem).
_BAD_PATH_CHAR = re.compile(r"[\x00-\x1f\x7f\\#;\x80-\U0010ffff]")
# One alternative per problem, tried in this order at each "%": the leftmost bad escape wins.
# Percent-escapes of RFC 3986 unreserved characters (ALPHA / DIGIT / "-" / "." / "_" / "~") must
# never be encoded in a canonical path; encoded "/" and "\" hide segment boundaries.
_UNRESERVED_HEX = "3[0-9]|4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|2D|2E|5F|7E"  # ALPHA DIGIT - . _ ~
_BAD_ESCAPE = re.compile(
    r"%(?:(?P<malformed>(?![0-9A-Fa-f]{2}))"
    r"|(?P<lower>[0-9A-Fa-f][a-f]|[a-f][0-9A-Fa-f])"
    r"|(?P<slash>2F|5C)"
    rf"|(?P<unreserved>{_UNRESERVED_HEX})"
    r"|(?P<control>[01][0-9A-F]|7F)"
    r"|(?P<double>25(?=[0-9A-Fa-f]{2})))"
)
_ESCAPE_PROBLEMS = {
    "malformed": "malformed percent-escape in path",
    "lower": "lower-case percent-escape in path",
    "slash": "encoded slash or backslash in path",
    "unreserved": "encoded unreserved character in path",
    "control": "encoded control character in path",
    "double": "double-encoded percent-escape in path",  # %252F: '/' after a second decode
}
# A path whose escapes spell well-formed UTF-8 (RFC 3629 s4), upper-case hex, over ASCII text.
_CONT = "%[89AB][0-9A-F]"
_UTF8_ESCAPED_PATH = re.compile(
    r"(?:[^%]|%[0-7][0-9A-F]"
    rf"|%(?:C[2-9A-F]|D[0-9A-F]){_CONT}"
    rf"|%E0%[AB][0-9A-F]{_CONT}|%E[1-9A-CEF]{_CONT}{_CONT}|%ED%[89][0-9A-F]{_CONT}"
    rf"|%F0%[9AB][0-9A-F]{_CONT}{_CONT}|%F[1-3]{_CONT}{_CONT}{_CONT}|%F4%8[0-9A-F]{_CONT}{_CONT})*"
)
# RFC 9110 token: a method never carries spaces or separators.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# What from_check_request checks a method and a host against (the decision cache's message_key
# applies the same checks).
METHOD_TOKEN = _TOKEN
AUTHORITY = _AUTHORITY


def path_problem(path: str) -> str | None:
    """Return why ``path`` (the path part, query removed) is not canonical, or None when it is.

    Canonical means: what Envoy sends with ``normalize_path`` and ``merge_slashes`` on, so that a
    string comparison against policy paths cannot be bypassed by an equivalent spelling.
    Linear in the path's length, every step a compiled regex (no per-character Python loop), and
    the path is at most ``MAX_PATH_BYTES`` long: one request costs at most a few normal checks.
    """
    if len(path) > MAX_PATH_BYTES:
        return f"path longer than {MAX_PATH_BYTES} bytes"
    if not path.startswith("/"):
        return "path does not start with '/'"
    if _PLAIN_PATH.fullmatch(path):  # the common case: no escapes, nothing but plain pchars
        if "//" in path:
            return "empty path segment"
        if "/." in path and _DOT_SEGMENT.search(path):
            return "dot segment in path"
        return None
    bad = _BAD_PATH_CHAR.search(path)  # the first offending character decides, as Envoy reads it
    if bad is not None:
        ch = bad.group()
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            return "control character in path"
        if ch == "\\":
            return "backslash in path"
        if ch == "#":
            return "fragment in path"
        if ch == ";":  # /admin;x=1 is /admin to Servlet containers (matrix parameters)
            return "path parameter (';') in path"
        return "non-ASCII character in path"
    if not _PATH_CHARS.fullmatch(path):
        return "character not allowed in a path"
    if "//" in path:
        return "empty path segment"
    if _DOT_SEGMENT.search(path):
        return "dot segment in path"
    if "%" not in path:
        return None
    esc = _BAD_ESCAPE.search(path)  # the first bad escape, its first problem (in this order)
    if esc is not None:
        return _ESCAPE_PROBLEMS[esc.lastgroup or "malformed"]
    # Every escape is now well-formed upper-case hex over ASCII text: the escaped bytes must be
    # UTF-8 (overlong forms such as %C0%AF, a '/' to lenient decoders, and stray bytes are not).
    if not _UTF8_ESCAPED_PATH.fullmatch(path):
        return "percent-escapes do not decode to UTF-8"
    return None


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of the connection as Envoy saw it."""

    principal: str = ""
    address: str = ""
    port: int = 0
    certificate: str = ""  # URL-encoded PEM, only with include_peer_certificate


@dataclass(frozen=True, slots=True)
class RequestView:
    """An immutable view of one CheckRequest, normalised for policy evaluation."""

    source: Peer = field(default_factory=Peer)
    destination: Peer = field(default_factory=Peer)
    method: str = ""  # as sent (not case-folded)
    host: str = ""  # lower case, port and trailing dot removed
    port: int = 0  # destination port (from the destination address)
    raw_path: str = ""  # as Envoy sent it, query included
    path: str = ""  # without query
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # lower-case keys
    context_extensions: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    request_id: str = ""
    protocol: str = ""
    scheme: str = ""
    sni: str = ""
    problem: str | None = None  # why the request is not in canonical form (answered with 400)

    @property
    def namespace(self) -> str:
        """The destination namespace: context_extensions.namespace, else the principal's /ns/N/."""
        ns = self.context_extensions.get("namespace")
        if ns:
            return ns
        return namespace_of(self.destination.principal)


def namespace_of(principal: str) -> str:
    """The ``N`` of a ``.../ns/N/...`` principal, or "" when it has none."""
    parts = principal.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "ns" and i >= 1:
            return parts[i + 1]
    return ""


def split_host(host: str) -> str:
    """Lower-case a Host/:authority value and drop its port and a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _peer(p: Any) -> Peer:
    sock = p.address.socket_address
    return Peer(
        principal=p.principal,
        address=sock.address,
        port=int(sock.port_value),
        certificate=p.certificate,
    )


def from_check_request(msg: Any) -> RequestView:
    """Build the view from a decoded ``envoy.service.auth.v3.CheckRequest``."""
    attrs = msg.attributes
    http = attrs.request.http
    headers = dict(http.headers)
    names = "".join(headers)
    case_clash = False
    if names != names.lower():  # Envoy sends lower-case names: lower them only when needed
        headers = {k.lower(): v for k, v in headers.items()}
        case_clash = len(headers) != len(http.headers)
    if not headers and len(http.header_map.headers):
        joined: dict[str, str] = {}
        for hv in http.header_map.headers:
            key = hv.key.lower()
            value = hv.value or hv.raw_value.decode("utf-8", "replace")
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        headers = joined
    raw_path = http.path or headers.get(":path", "")
    path, sep, query = raw_path.partition("?")
    host = http.host or headers.get(":authority", "") or headers.get("host", "")
    destination = _peer(attrs.destination)
    method = http.method or headers.get(":method", "")
    problem = path_problem(path)
    if problem is None and not _TOKEN.fullmatch(method):
        problem = "method is not an HTTP token"
    if problem is None and host and not _AUTHORITY.fullmatch(host):
        problem = "malformed host"
    if problem is None and case_clash:
        problem = "header names repeated in different case"  # Envoy sends one lower-case key
    return RequestView(
        source=_peer(attrs.source),
        destination=destination,
        method=method,  # as sent: Envoy compares :method exactly (Istio), a DENY folds case
        host=split_host(host),
        port=destination.port,
        raw_path=raw_path,
        path=path,
        query=query if sep else "",
        headers=MappingProxyType(headers),
        context_extensions=(
            MappingProxyType(dict(attrs.context_extensions)) if attrs.context_extensions else _EMPTY
        ),
        request_id=headers.get("x-request-id", "") or http.id,
        protocol=http.protocol,
        scheme=http.scheme,
        sni=attrs.tls_session.sni,
        problem=problem,
    )
