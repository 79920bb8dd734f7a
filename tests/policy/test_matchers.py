"""Value matchers against a reference written from the definitions (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.policy.matchers import compile_matcher

SEGMENTS = st.sampled_from(["a", "b", "api", "v1", "x.y", "%20", "", "*", "a*"])
PATHS = st.lists(SEGMENTS, min_size=0, max_size=5).map(lambda s: "/" + "/".join(s))
TEMPLATE_SEGMENTS = st.sampled_from(["a", "api", "v1", "{*}"])


@st.composite
def templates(draw: st.DrawFn) -> str:
    segs = draw(st.lists(TEMPLATE_SEGMENTS, min_size=1, max_size=4))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(segs)))
        tail = [s for s in segs[at:] if s != "{*}"]  # nothing but literals after {**}
        segs = [*segs[:at], "{**}", *tail]
    return "/" + "/".join(segs)


def reference_template(pattern: str, path: str) -> bool:
    """Envoy's uri_template, from its definition: '{*}' is one or more characters of a segment,
    '{**}' zero or more characters ('/' included); the rest is literal. ('*' is a pchar: the real
    Envoy matches it with either glob, tests/differential.)"""
    tokens: list[str] = []
    rest = pattern
    while rest:
        if rest.startswith("{**}"):
            tokens.append("**")
            rest = rest[4:]
        elif rest.startswith("{*}"):
            tokens.append("*")
            rest = rest[3:]
        else:
            tokens.append(rest[0])
            rest = rest[1:]

    def match(t: int, i: int) -> bool:
        if t == len(tokens):
            return i == len(path)
        tok = tokens[t]
        if tok in ("*", "**"):
            j = i
            if tok == "**" and match(t + 1, j):
                return True
            while j < len(path) and (tok == "**" or path[j] != "/"):
                j += 1
                if match(t + 1, j):
                    return True
            return False
        return i < len(path) and path[i] == tok and match(t + 1, i + 1)

    return match(0, 0)


@settings(max_examples=400, deadline=None)
@given(templates(), PATHS)
def test_path_templates(pattern: str, path: str) -> None:
    assert compile_matcher([pattern], paths=True)(path) is reference_template(pattern, path)


def reference_value(pattern: str, value: str) -> bool:
    if not value:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


PATTERNS = st.one_of(
    st.just("*"),
    st.text(alphabet="ab/.", min_size=1, max_size=4),
    st.text(alphabet="ab/.", min_size=1, max_size=4).map(lambda s: s + "*"),
    st.text(alphabet="ab/.", min_size=1, max_size=4).map(lambda s: "*" + s),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(PATTERNS, min_size=1, max_size=3), st.text(alphabet="ab/.", max_size=6))
def test_value_forms_are_alternatives(patterns: list[str], value: str) -> None:
    expected = any(reference_value(p, value) for p in patterns)
    assert compile_matcher(patterns)(value) is expected
