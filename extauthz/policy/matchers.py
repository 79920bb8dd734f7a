"""String matchers for Istio's value forms, compiled once per policy load.

Forms: exact ``abc``, prefix ``abc*``, suffix ``*abc``, presence ``*`` (any non-empty value), and
for paths the templates ``{*}`` (one whole segment) and ``{**}`` (one or more segments, last).
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
    """Compile Istio value patterns. ``paths`` enables ``{*}``/``{**}`` templates."""
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    templates: list[re.Pattern[str]] = []
    presence = False
    for raw in patterns:
        p = raw.lower() if fold_case else raw
        if paths and "{" in p:
            templates.append(_compile_template(p))
        elif p == "*":
            presence = True
        elif p.startswith("*"):
            if "*" in p[1:]:
                raise PatternError(f"{raw!r}: '*' may only stand at the start or the end")
            suffixes.append(p[1:])
        elif p.endswith("*"):
            if "*" in p[:-1]:
                raise PatternError(f"{raw!r}: '*' may only stand at the start or the end")
            prefixes.append(p[:-1])
        elif "*" in p:
            raise PatternError(f"{raw!r}: '*' may only stand at the start or the end")
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


def _compile_template(pattern: str) -> re.Pattern[str]:
    """Compile an Istio path template (``/foo/{*}/bar``, ``/foo/{**}``) to a regex."""
    if not pattern.startswith("/"):
        raise PatternError(f"{pattern!r}: a path template must start with '/'")
    if "*" in pattern.replace("{*}", "").replace("{**}", ""):
        raise PatternError(f"{pattern!r}: a path template cannot mix '*' with '{{*}}' or '{{**}}'")
    segments = pattern[1:].split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "{*}":
            out.append(r"[^/]+")
        elif seg == "{**}":
            if i != len(segments) - 1:
                raise PatternError(f"{pattern!r}: '{{**}}' must be the last operator")
            out.append(r"[^/]+(?:/[^/]+)*")
        elif "{" in seg or "}" in seg:
            raise PatternError(f"{pattern!r}: '{{*}}'/'{{**}}' must be a whole segment")
        else:
            out.append(re.escape(seg))
    return re.compile("/" + "/".join(out))
