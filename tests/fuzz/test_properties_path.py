"""Properties of the path canonicaliser (``extauthz.envoy.request.path_problem``) and the request view.

The canonicaliser does not normalise: it refuses any path that is not already in the form Envoy
produces with ``normalize_path``, ``merge_slashes`` and escaped slashes rejected, so that a
string comparison against policy paths cannot be bypassed. The properties below check that
against two reference normalisers written here from the RFC, independent of the code under test:

- ``rfc3986_normalise``: RFC 3986 section 6.2.2 (percent-encoding normalisation: upper-case hex,
  decode unreserved; section 5.2.4 remove_dot_segments) plus merging slashes;
- ``envoy_normalise``: what the Envoy settings do: backslash to slash, reject ``%2F``/``%5C``,
  then RFC 3986 normalisation and merging slashes.

A canonical path is a fixed point of both; a benign path normalised by Envoy is canonical.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from extauthz.envoy.request import from_check_request, path_problem
from extauthz.tools.samples import check_request

UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _normalise_escapes(path: str) -> str:
    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in UNRESERVED else "%" + m.group(1).upper()

    return _ESCAPE.sub(fix, path)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, literally."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end == -1 else end
            out += inp[:end]
            inp = inp[end:]
    return out


def merge_slashes(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def rfc3986_normalise(path: str) -> str:
    return merge_slashes(remove_dot_segments(_normalise_escapes(path)))


def envoy_normalise(path: str) -> str | None:
    """None when Envoy would reject the path (escaped slash or backslash)."""
    if re.search(r"%(2[Ff]|5[Cc])", path):
        return None
    return rfc3986_normalise(path.replace("\\", "/"))


# Strategies: random text, and paths assembled from the pieces every bypass is made of.
PIECES = st.sampled_from(
    ["/", "//", ".", "..", "%", "%2F", "%2f", "%5C", "%2E", "%2e", "%25", "%41", "%7e", "%C0%AF",
     "%C3%A9", "%c3%a9", "%00", "%0A", "%20", "%FF", ";", "#", "?", "\\", "\x00", "\t", " ", "~",
     "a", "b", "admin", "api", "A", "-", "_", "é", ":", "@", "=", "+", "'", "*", "!"]
)
ASSEMBLED = st.lists(PIECES, max_size=12).map("".join)
BENIGN_PIECES = st.sampled_from(["/", "//", ".", "..", "a", "b", "api", "%41", "%7E", "x-y_z~"])
BENIGN = st.lists(BENIGN_PIECES, max_size=12).map(lambda parts: "/" + "".join(parts))


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED))
@example("/api/admin;x=1")
@example("/%C0%AF")
def test_no_input_raises(path: str) -> None:
    problem = path_problem(path)
    assert problem is None or (isinstance(problem, str) and problem)


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED), st.text(max_size=30), st.text(max_size=12))
def test_the_request_view_never_raises(path: str, host: str, method: str) -> None:
    view = from_check_request(check_request(path=path, host=host, method=method))
    assert view.problem is None or isinstance(view.problem, str)


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED, BENIGN))
def test_a_canonical_path_is_a_fixed_point_of_rfc3986_normalisation(path: str) -> None:
    if path_problem(path) is None:
        assert rfc3986_normalise(path) == path


@SETTINGS
@given(st.one_of(st.text(), ASSEMBLED, BENIGN))
def test_envoy_normalisation_does_not_change_a_canonical_path(path: str) -> None:
    if path_problem(path) is None:
        assert envoy_normalise(path) == path


@SETTINGS
@given(ASSEMBLED)
def test_canonical_paths_are_plain_ascii_origin_form(path: str) -> None:
    """What is accepted carries none of the bypass ingredients."""
    if path_problem(path) is None:
        assert path.startswith("/")
        assert not any(c in path for c in "\\#;\x00\t ?")
        assert all(0x20 < ord(c) < 0x7F for c in path)
        assert not re.search(r"%(2[Ff]|5[Cc]|25[0-9A-Fa-f]{2})", path)
        assert "//" not in path
        assert "/./" not in path + "/" and "/../" not in path + "/"


@SETTINGS
@given(BENIGN)
def test_a_benign_path_normalised_by_envoy_is_canonical(path: str) -> None:
    """Availability: the refusals do not catch what Envoy itself produces from ordinary paths."""
    normalised = envoy_normalise(path)
    assert normalised is not None
    assert path_problem(normalised) is None, (path, normalised)


def test_reference_normaliser_examples() -> None:
    """The reference itself, against RFC 3986 section 5.4 style examples."""
    assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
    assert remove_dot_segments("mid/content=5/../6") == "mid/6"
    assert rfc3986_normalise("//a/%7e/%2e%2E/b") == "/a/b"
    assert envoy_normalise("/a%2fb") is None
    assert envoy_normalise("/a\\..\\b") == "/b"
