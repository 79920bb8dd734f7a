"""``x-forwarded-client-cert``: parsed only for trusted proxies, and only the last element.

Envoy's format: elements separated by ``,``; in an element, ``key=value`` pairs separated by
``;``; a value may be double-quoted (then ``,``, ``;`` and ``=`` are literal and ``\\"`` is a
quote). Keys: By, Hash, Cert, Chain, Subject, URI, DNS. Each hop appends its element, so the last
one is what the trusted proxy itself saw; everything before it came from further away.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "x-forwarded-client-cert"
MAX_XFCC_BYTES = 64 * 1024
_KEYS = frozenset({"by", "hash", "cert", "chain", "subject", "uri", "dns"})
_SINGLE = frozenset({"by", "hash", "cert", "chain", "subject", "uri"})


class XfccError(ValueError):
    """A header that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class XfccElement:
    by: str = ""
    hash: str = ""
    cert: str = ""  # URL-encoded PEM, as in source.certificate
    chain: str = ""
    subject: str = ""
    uri: str = ""
    dns: tuple[str, ...] = ()


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes; quotes are kept for the value parser."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            cur.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            cur.append(ch)
            escaped = True
        elif ch == '"':
            cur.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quoted:
        raise XfccError("unterminated quote")
    parts.append("".join(cur))
    return parts


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        if '"' in value:
            raise XfccError("stray quote in a value")
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise XfccError("badly quoted value")
    out: list[str] = []
    inner = value[1:-1]
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            if i + 1 >= len(inner):
                raise XfccError("dangling escape")
            out.append(inner[i + 1])
            i += 2
            continue
        if ch == '"':
            raise XfccError("unescaped quote inside a quoted value")
        out.append(ch)
        i += 1
    return "".join(out)


def parse_element(text: str) -> XfccElement:
    fields: dict[str, str] = {}
    dns: list[str] = []
    for pair in _split(text, ";"):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        key = key.strip().lower()
        if not sep or key not in _KEYS:
            raise XfccError(f"unknown or malformed pair {key[:40]!r}")
        value = _unquote(value.strip())
        if key == "dns":
            dns.append(value)
        elif key in fields:
            raise XfccError(f"{key} given twice in one element")
        else:
            fields[key] = value
    assert set(fields) <= _SINGLE
    return XfccElement(dns=tuple(dns), **fields)


def last_element(header: str) -> XfccElement:
    """The element the nearest hop appended."""
    if len(header) > MAX_XFCC_BYTES:
        raise XfccError("header too large")
    elements = [e for e in _split(header, ",") if e.strip()]
    if not elements:
        raise XfccError("empty header")
    return parse_element(elements[-1].strip())


class TrustedProxies:
    """The CIDRs whose direct connections may vouch for a client with XFCC."""

    def __init__(self, cidrs: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        if not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks)
