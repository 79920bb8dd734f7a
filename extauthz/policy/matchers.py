"""String matchers for Istio's value forms, compiled once per policy load.

Forms: exact ``abc``, prefix ``abc*``, suffix ``*abc``, presence ``*`` (any non-empty value), and
for paths the templates ``{*}`` (one whole segment) and ``{**}`` (zero or more characters, '/'
included; the last operator), as Envoy's uri_template matches them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


class PatternError(ValueError):
    """A value pattern that Istio would not accept."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """Matches a string against any of a set of patterns (the values of one field are ORed)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    suffixes: tuple[str, ...]
    presence: bool
    templates: tuple[re.Pattern[str], ...] = ()
    fold_case: bool = False

    def __call__(self, value: str) -> bool:
        if not value:
            return False
        if self.fold_case:
            value = value.lower()
        if self.presence or value in self.exact:
            return True
        if self.prefixes and value.startswith(self.prefixes):
            return True
        if self.suffixes and value.endswith(self.suffixes):
            return True
        return any(t.fullmatch(value) for t in self.templates)

    def any(self, values: Iterable[str]) -> bool:
        return any(self(v) for v in values)


def compile_matcher(
    patterns: Iterable[str], *, paths: bool = False, fold_case: bool = False
) -> Matcher:
    """Compile Istio value patterns as Istio hands them to Envoy (``StringMatcherWithPrefix``).

    ``*`` is presence (any non-empty value); a leading ``*`` makes a suffix and a trailing one a
    prefix (the rest is literal); any other ``*`` is literal text (Istio matches ``a*b`` exactly).
    ``paths`` enables the ``{*}``/``{**}`` templates (Envoy's uri_template).
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    templates: list[re.Pattern[str]] = []
    presence = False
    for raw in patterns:
        p = raw.lower() if fold_case else raw
        if paths and ("{*}" in p or "{**}" in p):
            templates.append(_compile_template(p))
        elif paths and ("{" in p or "}" in p):
            raise PatternError(f"{raw!r}: '{{' and '}}' are only allowed in '{{*}}' and '{{**}}'")
        elif p == "*":
            presence = True
        elif p.startswith("*"):
            suffixes.append(p[1:])
        elif p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    return Matcher(
        exact=frozenset(exact),
        prefixes=tuple(prefixes),
        suffixes=tuple(suffixes),
        presence=presence,
        templates=tuple(templates),
        fold_case=fold_case,
    )


# Envoy's uri_template (envoy.extensions.path.match.uri_template): ``*`` is one path segment of
# pchars, ``**`` zero or more pchars and '/'. A literal '*' is a pchar (RFC 3986 sub-delim): the
# real Envoy 1.40 matches ``/a/*`` with ``/a/{*}`` (tests/differential).
_PCHARS = r"a-zA-Z0-9\-._~%!$&'()*+,;:@="
_ONE = f"[{_PCHARS}]+"
_ANY = f"[{_PCHARS}/]*"
_LITERAL = re.compile(r"[a-zA-Z0-9\-._~%!$&'()+,;:@=]+")  # Istio's literal: no '*'


def _compile_template(pattern: str) -> re.Pattern[str]:
    """Compile an Istio path template (``/foo/{*}/bar``, ``/foo/{**}``, ``/{**}/x``) to a regex.

    Istio's rules: ``{*}``/``{**}`` are whole segments; ``{**}`` is the last operator (literal
    segments may follow it); literal segments are pchars (no '*').
    """
    if not pattern.startswith("/"):
        raise PatternError(f"{pattern!r}: a path template must start with '/'")
    segments = pattern.split("/")
    out: list[str] = []
    seen_any = False
    for i, seg in enumerate(segments):
        if seg in ("{*}", "{**}"):
            if seen_any:
                raise PatternError(f"{pattern!r}: '{{**}}' must be the last operator")
            seen_any = seg == "{**}"
            out.append(_ANY if seen_any else _ONE)
        elif "{" in seg or "}" in seg:
            raise PatternError(f"{pattern!r}: '{{*}}'/'{{**}}' must be a whole segment")
        elif seg == "" and i in (0, len(segments) - 1):
            out.append("")
        elif not _LITERAL.fullmatch(seg):
            raise PatternError(
                f"{pattern!r}: segment {seg!r} of a path template is not a literal "
                "(no '*', no empty segment)"
            )
        else:
            out.append(re.escape(seg))
    return re.compile("/".join(out))


# ----------------------------------------------------------------------------- per field
# How each Istio field's values are compiled: a factory ``(values, wide) -> test``, keyed by the
# field's name (``methods``; ``request.headers`` for every ``request.headers[..]`` key). Compiled
# rules look the factory up here at compile time (the differential test's mutation check breaks
# one entry at a time). ``wide``: the DENY reading, every spelling an upstream may treat as the
# same (method case); elsewhere Istio's exact reading.

ValueTest = Callable[[str], bool]
Factory = Callable[[Sequence[str], bool], ValueTest]


def strings(values: Sequence[str], wide: bool = False) -> ValueTest:
    return compile_matcher(values)


def hosts(values: Sequence[str], wide: bool = False) -> ValueTest:
    """``:authority`` with ``ignore_case: true`` (Istio's HostMatcher)."""
    return compile_matcher(values, fold_case=True)


def methods(values: Sequence[str], wide: bool = False) -> ValueTest:
    """Envoy compares ``:method`` exactly; the DENY reading folds case (``get`` is ``GET`` to
    many upstreams)."""
    return compile_matcher(values, fold_case=wide)


def paths(values: Sequence[str], wide: bool = False) -> ValueTest:
    return compile_matcher(values, paths=True)


def ips(values: Sequence[str], wide: bool = False) -> ValueTest:
    networks = tuple(ipaddress.ip_network(b, strict=False) for b in values)

    def match(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            v4 = ip.ipv4_mapped  # ::ffff:1.2.3.4 is the IPv4 client 1.2.3.4: either spelling
            if any(n.version == 4 and v4 in n for n in networks):
                return True
        return any(ip.version == n.version and ip in n for n in networks)

    return match


def _glob(value: str, star: str) -> str:
    return star.join(re.escape(part) for part in value.split("*"))


def namespaces(values: Sequence[str], wide: bool = False) -> ValueTest:
    """Istio's regex on the peer principal: ``.*/ns/NS/.*``, each ``*`` of a value as ``.*``."""
    regex = re.compile("|".join(f".*/ns/{_glob(v, '.*')}/.*" for v in values))
    return lambda principal: regex.fullmatch(principal) is not None


def service_accounts(values: Sequence[str], wide: bool = False) -> ValueTest:
    """``ns/sa`` (resolved at load) against a principal ``<any trust domain>/ns/NS/sa/SA``; the
    DENY reading takes any principal ending in ``/ns/NS/sa/SA``."""
    wanted = frozenset(values)
    tails = tuple(f"/ns/{v.partition('/')[0]}/sa/{v.partition('/')[2]}" for v in values)

    def match(principal: str) -> bool:
        parts = principal.split("/")
        if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa":
            return f"{parts[2]}/{parts[4]}" in wanted
        return wide and principal.endswith(tails)

    return match


def trust_domains(values: Sequence[str], wide: bool = False) -> ValueTest:
    """The trust-domain part of the principal; a ``*`` stands for any run of characters but '/'."""
    regex = re.compile("|".join("[^/]+" if v == "*" else _glob(v, "[^/]*") for v in values))

    def match(principal: str) -> bool:
        td = principal.partition("/")[0]
        return bool(td) and regex.fullmatch(td) is not None

    return match


def header_values(values: Sequence[str], wide: bool = False) -> ValueTest:
    """Istio's header matcher: any comma-separated element of the joined value (Envoy joins
    repeats with ','): exact ``^v$|^v,.*|.*,v,.*|.*,v$``, prefix ``^v.*|.*,v.*``, suffix
    ``.*v$|.*v,.*``; ``*`` is presence (an empty value too)."""
    if "*" in values:
        return lambda v: True
    forms = []
    for v in values:
        if v.startswith("*"):
            forms.append(f".*{re.escape(v[1:])}(?:,.*)?")
        elif v.endswith("*"):
            forms.append(f"(?:.*,)?{re.escape(v[:-1])}.*")
        else:
            forms.append(f"(?:.*,)?{re.escape(v)}(?:,.*)?")
    regex = re.compile("|".join(forms), re.DOTALL)
    return lambda value: regex.fullmatch(value) is not None


FIELD_MATCHERS: dict[str, Factory] = {
    "principals": strings,
    "requestPrincipals": strings,
    "namespaces": namespaces,
    "ipBlocks": ips,
    "remoteIpBlocks": ips,
    "serviceAccounts": service_accounts,
    "trustDomains": trust_domains,
    "hosts": hosts,
    "ports": strings,
    "methods": methods,
    "paths": paths,
    "request.headers": header_values,
    "request.auth.claims": strings,
    "source.ip": ips,
    "remote.ip": ips,
    "destination.ip": ips,
    "source.namespace": namespaces,
    "source.principal": strings,
    "request.auth.principal": strings,
    "request.auth.audiences": strings,
    "request.auth.presenter": strings,
    "destination.port": strings,
    "connection.sni": strings,
}


def field_matcher(field: str) -> Factory:
    """The factory for a field name or a ``when`` key (``request.headers[x]`` -> its family)."""
    return FIELD_MATCHERS[field.partition("[")[0]]
