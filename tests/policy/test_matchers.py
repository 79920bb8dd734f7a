"""Value matchers against a reference written from the definitions (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extauthz.policy.matchers import compile_matcher

SEGMENTS = st.sampled_from(["a", "b", "api", "v1", "x.y", "%20", ""])
PATHS = st.lists(SEGMENTS, min_size=0, max_size=5).map(lambda s: "/" + "/".join(s))
TEMPLATE_SEGMENTS = st.sampled_from(["a", "api", "v1", "{*}"])


@st.composite
def templates(draw: st.DrawFn) -> str:
    segs = draw(st.lists(TEMPLATE_SEGMENTS, min_size=1, max_size=4))
    if draw(st.booleans()):
        segs.append("{**}")
    return "/" + "/".join(segs)


def reference_template(pattern: str, path: str) -> bool:
    pat = pattern[1:].split("/")
    got = path[1:].split("/") if path.startswith("/") else None
    if got is None:
        return False
    if pat[-1] == "{**}":
        head = pat[:-1]
        tail = got[len(head):]
        if len(got) <= len(head) or any(s == "" for s in tail):
            return False
        got = got[: len(head)]
        pat = head
    if len(pat) != len(got):
        return False
    return all((p == "{*}" and g != "") or p == g for p, g in zip(pat, got, strict=True))


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
