"""``x-forwarded-client-cert``: parsed only for trusted proxies, and only the last element.

Envoy's format: elements separated by ``,``; in an element, ``key=value`` pairs separated by
``;``; a value may be double-quoted (then ``,``, ``;`` and ``=`` are literal and ``\\"`` is a
quote). Keys: By, Hash, Cert, Chain, Subject, URI, DNS. Each hop appends its element, so the last
one is what the trusted proxy itself saw; everything before it came from further away.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "x-forwarded-client-cert"
MAX_XFCC_BYTES = 64 * 1024
# Elements and pairs: a client behind a proxy that forwards its XFCC controls the start of the
# header; this bounds the parser's work per request (a real header has a handful of each).
MAX_XFCC_SEPARATORS = 1024
_QUOTED = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_PART = {sep: re.compile(rf'(?:[^"{sep}]+|{_QUOTED})*', re.DOTALL) for sep in ",;"}
_QUOTED_VALUE = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)  # "unrolled": fast
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
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
    """Split on ``sep`` outside double quotes; quotes are kept for the value parser. The scanning
    is done by a compiled regex (linear, no per-character Python loop); the number of parts is
    bounded by ``MAX_XFCC_SEPARATORS`` (checked by the caller)."""
    parts: list[str] = []
    pos, n = 0, len(text)
    part = _PART[sep]
    while True:
        end = part.match(text, pos).end()  # type: ignore[union-attr]  # the pattern matches ""
        parts.append(text[pos:end])
        if end == n:
            return parts
        if text[end] != sep:  # a '"' that starts no complete quoted string
            raise XfccError("unterminated quote")
        pos = end + 1


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        if '"' in value:
            raise XfccError("stray quote in a value")
        return value
    m = _QUOTED_VALUE.fullmatch(value)
    if m is None:
        raise XfccError("badly quoted value (a dangling escape or an unescaped quote)")
    return _ESCAPE.sub(r"\1", m.group(1))


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
    if header.count(",") + header.count(";") > MAX_XFCC_SEPARATORS:
        raise XfccError("too many elements or pairs")
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
