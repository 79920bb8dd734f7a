"""String matchers for Istio's value forms, compiled once per policy load.

Forms: exact ``abc``, prefix ``abc*``, suffix ``*abc``, presence ``*`` (any non-empty value), and
for paths the templates ``{*}`` (one whole segment) and ``{**}`` (zero or more characters, '/'
included; the last operator), as Envoy's uri_template matches them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
# pchars, ``**`` zero or more pchars and '/'. Neither matches a literal '*'.
_PCHARS = r"a-zA-Z0-9\-._~%!$&'()+,;:@="
_ONE = f"[{_PCHARS}]+"
_ANY = f"[{_PCHARS}/]*"
_LITERAL = re.compile(f"[{_PCHARS}]+")


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
