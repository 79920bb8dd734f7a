"""What ``extauthz lint`` knows about rules and patterns, certainly (never heuristically): the
canonical spelling of a path pattern, a rule its own not-values make dead, and whether one rule
covers (matches every request of) another.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from extauthz.envoy.request import path_problem
from extauthz.policy.model import Operation, Rule, Source

_DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


def pattern_problem(pattern: str) -> str | None:
    """Why the literal parts of a path pattern can never appear in a canonical path."""
    if pattern == "*":
        return None
    literal = pattern.replace("{**}", "x").replace("{*}", "x")
    if literal.startswith("*"):  # a suffix: some path ends with it
        literal = "/x" + literal[1:]
    if literal.endswith("*"):  # a prefix: some path continues it
        literal = literal[:-1] + "x"
    return path_problem(literal)


def canonical_pattern(pattern: str) -> str:
    """The canonical spelling of a path pattern: slashes merged, dot segments resolved,
    unreserved escapes decoded, hex upper case."""
    def fix_escape(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        if ch.isalnum() or ch in "-._~":
            return ch
        return "%" + m.group(1).upper()

    p = re.sub(r"%([0-9A-Fa-f]{2})", fix_escape, pattern.replace("\\", "/"))
    p = re.sub(r"/{2,}", "/", p)
    out: list[str] = []
    for seg in p.split("/"):
        if seg == ".":
            continue
        if seg == "..":
            if len(out) > 1:
                out.pop()
            continue
        out.append(seg)
    result = "/".join(out)
    return result if result.startswith(("/", "*")) else "/" + result


def never_matches(rule: Rule) -> bool:
    """The rule's own not-values exclude everything some required field accepts."""
    def dead(entry: Any, names: Iterable[str]) -> bool:
        return any(
            getattr(entry, f) and getattr(entry, "not_" + f)
            and _covers(getattr(entry, "not_" + f), getattr(entry, f), ip=f in _IP_FIELDS)
            for f in names
        )

    if rule.sources and all(dead(s, _SOURCE) for s in rule.sources):
        return True
    if rule.operations and all(dead(o, _OPERATION) for o in rule.operations):
        return True
    return any(
        c.values and c.not_values and _covers(c.not_values, c.values, ip=_ip_key(c.key))
        for c in rule.conditions
    )



# ----------------------------------------------------------------------------- coverage


def _pattern_covers(a: str, b: str) -> bool:
    """Every string pattern ``b`` matches, pattern ``a`` matches too (certain, not heuristic)."""
    if a == b or a == "*":
        return True
    if "{" in a:
        if "*" in b or "{" in b:
            return False
        from extauthz.policy.matchers import compile_matcher

        return compile_matcher([a], paths=True)(b)
    if a.endswith("*"):
        prefix = a[:-1]
        if b.startswith("*") or b == "*":
            return False
        literal = b.split("{", 1)[0] if "{" in b else b.rstrip("*")
        return literal.startswith(prefix)
    if a.startswith("*"):
        suffix = a[1:]
        if b.endswith("*") or "{" in b:
            return False
        return b.lstrip("*").endswith(suffix)
    return False


def _covers(a: Sequence[str], b: Sequence[str], *, ip: bool = False) -> bool:
    """Every value pattern of ``b`` is covered by some pattern of ``a``."""
    if ip:
        nets_a = [ipaddress.ip_network(x, strict=False) for x in a]
        return all(
            any(nb.version == na.version and nb.subnet_of(na) for na in nets_a)  # type: ignore[arg-type]
            for nb in (ipaddress.ip_network(x, strict=False) for x in b)
        )
    return all(any(_pattern_covers(x, y) for x in a) for y in b)


_IP_FIELDS = ("ip_blocks", "remote_ip_blocks")


def _fields_cover(a: Any, b: Any, names: Iterable[str], norm: Mapping[str, Any]) -> bool:
    for f in names:
        ip = f in _IP_FIELDS
        fix = norm.get(f, lambda v: v)
        av = [fix(v) for v in getattr(a, f)]
        bv = [fix(v) for v in getattr(b, f)]
        if av and not (bv and _covers(av, bv, ip=ip)):
            return False
        an = [fix(v) for v in getattr(a, "not_" + f)]
        bn = [fix(v) for v in getattr(b, "not_" + f)]
        if an and not (bn and _covers(bn, an, ip=ip)):
            return False
    return True


_SOURCE = (
    "principals", "request_principals", "namespaces", "ip_blocks", "remote_ip_blocks",
    "service_accounts", "trust_domains",
)
_OPERATION = ("hosts", "ports", "methods", "paths")
_OP_NORM = {"hosts": str.lower, "methods": str.upper}


def rule_covers(a: Rule, b: Rule) -> bool:
    """Every request rule ``b`` matches, rule ``a`` matches (conservative)."""
    if a.sources and not (b.sources and all(
        any(_fields_cover(sa, sb, _SOURCE, {}) for sa in a.sources) for sb in b.sources
    )):
        return False
    if a.operations and not (b.operations and all(
        any(_fields_cover(oa, ob, _OPERATION, _OP_NORM) for oa in a.operations) for ob in b.operations
    )):
        return False
    for ca in a.conditions:
        if not any(
            cb.key == ca.key
            and (not ca.values or (cb.values and _covers(ca.values, cb.values, ip=_ip_key(ca.key))))
            and (not ca.not_values or (cb.not_values and _covers(cb.not_values, ca.not_values,
                                                                  ip=_ip_key(ca.key))))
            for cb in b.conditions
        ):
            return False
    return True


def _ip_key(key: str) -> bool:
    return key in ("source.ip", "remote.ip", "destination.ip")


# ----------------------------------------------------------------------------- odd values
# Values Istio loads (so extauthz does) that never match, or not as their author likely meant.

_GLOB_FIELDS = ("namespaces", "not_namespaces", "trust_domains", "not_trust_domains")
_GLOB_KEYS = ("source.namespace",)


def _literal_star(value: str, *, path: bool = False) -> bool:
    """A '*' Istio matches literally: not the whole value, not leading or trailing."""
    if path and ("{*}" in value or "{**}" in value):
        return False
    if value == "*":
        return False
    inner = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    return "*" in inner


def odd_values(rule: Rule) -> Iterator[tuple[str, str]]:
    """(code, message) for each valid-but-suspicious value of ``rule``."""
    parts: tuple[Source | Operation, ...] = (*rule.sources, *rule.operations)
    for part in parts:
        for f in dataclasses.fields(part):
            for v in getattr(part, f.name):
                yield from _odd(f.name, v)
    for c in rule.conditions:
        for v in (*c.values, *c.not_values):
            yield from _odd(c.key, v)


def _odd(name: str, v: str) -> Iterator[tuple[str, str]]:
    if name in ("principals", "not_principals", "source.principal") and v.startswith("spiffe://"):
        yield ("principal-scheme", f"principal {v!r} is written with 'spiffe://': Istio adds the "
               f"scheme itself, so it never matches; write {v[9:]!r}")
    if name in ("paths", "not_paths") and not v.startswith(("/", "*")):
        yield ("path-no-slash", f"path {v!r} does not start with '/': it never matches a request "
               f"path; write {'/' + v!r}")
    if name in ("service_accounts", "not_service_accounts") and (v.count("/") != 1 or "*" in v):
        yield ("service-account-form", f"service account {v!r} is not 'namespace/name' without "
               "'*' (no wildcards): it never matches")
    elif (name not in _GLOB_FIELDS and name not in _GLOB_KEYS and name not in _IP_KEYS_ALL
          and _literal_star(v, path=name in ("paths", "not_paths"))):
        yield ("literal-star", f"value {v!r}: a '*' other than at the start or the end is matched "
               "literally (as Istio does), not as a wildcard")


_IP_KEYS_ALL = ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks",
                "source.ip", "remote.ip", "destination.ip")
