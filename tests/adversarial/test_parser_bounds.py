"""The linear parsers of client input (issue 13) against their per-character definitions.

``path_problem`` (envoy/request.py) and the XFCC splitter and unquoter (identity/xfcc.py) were
per-character Python loops: a 48 KB path of %-escapes cost ~17 ms of CPU (~200 normal checks).
They are compiled regexes now, with a size bound. Here the old loops are the reference: for any
input within the bounds, the new code gives the same answer (hypothesis), and beyond the bounds
the input is refused with a reason. CPU figures: bench/README.md ("Parsers of client input").
"""

from __future__ import annotations

import re
import urllib.parse

import pytest
from helpers.attacks import DENY, assert_outcome, run_core
from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.envoy.request import MAX_PATH_BYTES, path_problem
from extauthz.identity import xfcc

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX_UPPER = frozenset("0123456789ABCDEF")
_HEX_ANY = frozenset("0123456789ABCDEFabcdef")
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")

PATH_PIECES = [
    "a", "Z", "0", "/", ".", "..", "%", "%2F", "%2f", "%5C", "%41", "%7E", "%25", "%252F", "%C3%A9",
    "%C0%AF", "%E2%82%AC", "%ED%A0%80", "%F0%9F%98%80", "%F4%90%80%80", "%E0%80%AF", "%8", "%G1",
    "%1F", "%7F", "%20", "%3B", ";", "#", "\\", "\x01", "\u00e9", " ", "~", "-", "%c3%A9", "%Ca", "%aC",
    "%FF", "%C3", "%80", "%EF%BF%BF", "%F0%90%80%80", "%E1%80%80", "%EE%80%80",
]
XFCC_PIECES = [
    "By=", "URI=", "DNS=", "Subject=", "Hash=", "x", '"', "\\", ",", ";", "=", " ", "spiffe://a/b",
    '"q,;="', '\\"', "\u00e9", "\n",
]


def reference_path_problem(path: str) -> str | None:
    """The per-character definition (the code before issue 13): slow, obviously right."""
    if not path.startswith("/"):
        return "path does not start with '/'"
    if _PLAIN_PATH.fullmatch(path):  # the common case: no escapes, nothing but plain pchars
        if "//" in path:
            return "empty path segment"
        if "/." in path and any(segment in (".", "..") for segment in path.split("/")):
            return "dot segment in path"
        return None
    for ch in path:
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            return "control character in path"
        if ch == "\\":
            return "backslash in path"
        if ch == "#":
            return "fragment in path"
        if ch == ";":  # /admin;x=1 is /admin to Servlet containers (matrix parameters)
            return "path parameter (';') in path"
        if o > 0x7E:
            return "non-ASCII character in path"
    if not _PATH_CHARS.fullmatch(path):
        return "character not allowed in a path"
    if "//" in path:
        return "empty path segment"
    for segment in path.split("/"):
        if segment in (".", ".."):
            return "dot segment in path"
    i = path.find("%")
    while i != -1:
        esc = path[i + 1 : i + 3]
        if len(esc) != 2 or not set(esc) <= _HEX_ANY:
            return "malformed percent-escape in path"
        if not set(esc) <= _HEX_UPPER:
            return "lower-case percent-escape in path"
        byte = int(esc, 16)
        if byte in (0x2F, 0x5C):
            return "encoded slash or backslash in path"
        if byte in _UNRESERVED:
            return "encoded unreserved character in path"
        if byte < 0x20 or byte == 0x7F:
            return "encoded control character in path"
        if byte == 0x25 and len(path) >= i + 5 and set(path[i + 3 : i + 5]) <= _HEX_ANY:
            return "double-encoded percent-escape in path"  # %252F: '/' after a second decode
        i = path.find("%", i + 3)
    try:  # overlong forms (%C0%AF is a '/' to lenient decoders) and stray bytes are not UTF-8
        urllib.parse.unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        return "percent-escapes do not decode to UTF-8"
    return None


def reference_split(text: str, sep: str) -> list[str]:
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
        raise ValueError("unterminated quote")
    parts.append("".join(cur))
    return parts


def reference_unquote(value: str) -> str:
    if not value.startswith('"'):
        if '"' in value:
            raise ValueError("stray quote in a value")
        return value
    if len(value) < 2 or not value.endswith('"'):
        raise ValueError("badly quoted value")
    out: list[str] = []
    inner = value[1:-1]
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "\\":
            if i + 1 >= len(inner):
                raise ValueError("dangling escape")
            out.append(inner[i + 1])
            i += 2
            continue
        if ch == '"':
            raise ValueError("unescaped quote inside a quoted value")
        out.append(ch)
        i += 1
    return "".join(out)




@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PATH_PIECES), max_size=12), st.booleans())
def test_path_problem_matches_the_per_character_definition(pieces: list[str], slash: bool) -> None:
    path = ("/" if slash else "") + "".join(pieces)
    assert path_problem(path) == reference_path_problem(path)


def _parse(split: object, unquote: object, header: str) -> object:
    try:
        element = split(header, ",")  # type: ignore[operator]
        last = [e for e in element if e.strip()][-1]
        return [unquote(p.partition("=")[2].strip()) for p in split(last.strip(), ";")]  # type: ignore[operator]
    except (ValueError, IndexError):
        return "error"


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(XFCC_PIECES), max_size=12))
def test_xfcc_split_and_unquote_match_the_per_character_definition(pieces: list[str]) -> None:
    header = "".join(pieces)
    assert _parse(xfcc._split, xfcc._unquote, header) == _parse(reference_split, reference_unquote, header)


def test_long_path_is_refused_with_a_reason() -> None:
    """A 45 KB path of valid %-escapes was decided (allowed by /api/*) at ~17 ms of CPU."""
    long_path = "/api/" + "%E2%82%AC" * 5000
    out = run_core(POLICY, path=long_path, principal="spiffe://example.org/ns/shop/sa/frontend")
    assert_outcome(out, DENY, 400)
    assert out.reason == "invalid_request"
    assert out.decision.error == f"path longer than {MAX_PATH_BYTES} bytes"


def test_path_at_the_bound_is_decided() -> None:
    path = "/api/" + "%E2%82%AC" * ((MAX_PATH_BYTES - 5) // 9)
    assert len(path) <= MAX_PATH_BYTES and path_problem(path) is None
    assert urllib.parse.unquote(path, errors="strict")


def test_xfcc_with_too_many_separators_is_refused() -> None:
    with pytest.raises(xfcc.XfccError, match="too many"):
        xfcc.last_element("," * (xfcc.MAX_XFCC_SEPARATORS + 1) + "URI=spiffe://td/x")
    assert xfcc.last_element("," * 100 + "URI=spiffe://td/x").uri == "spiffe://td/x"


POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
"""
