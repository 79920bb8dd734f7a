"""Path tricks: spellings of a denied path that a naive string comparison would let through.

The attacked policy (``POLICY``) is the shape every path bypass advisory describes: an ALLOW on a
prefix (``/api/*``) with a DENY carved out of it (``/api/admin`` and everything below). The secure
outcome of each attack is a deny: either the path is not canonical (400 ``invalid_request``, so no
spelling game reaches the matcher) or the DENY matches (403). Never an allow.

Each class runs through the Check core on serialized CheckRequest bytes (what Envoy could send,
including what a misconfigured Envoy would send), and the classes where Envoy's own processing
matters also through the real Envoy (``normalize_path``, ``merge_slashes``, escaped slashes
rejected): there the secure outcome is a 4xx and nothing at the upstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pytest
from helpers.attacks import ALLOW, DENY, EnvoyStack, Outcome, assert_outcome, needs_envoy, run_core

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin", "/api/admin/*"]}}]
"""


def check(path: str) -> Outcome:
    return run_core(POLICY, path=path)


# --------------------------------------------------------------------------- controls


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/items", ALLOW),
        ("/api/items?next=/api/admin", ALLOW),  # the query is not the path
        ("/api/admin", DENY),
        ("/api/admin/users", DENY),
        ("/other", DENY),
    ],
)
def test_controls_the_policy_is_not_trivially_deny_all(path: str, expected: str) -> None:
    """Without these the attack cases below could pass against a service that denies all."""
    assert_outcome(run_core(POLICY, path=path), expected)


# --------------------------------------------------------------------------- the classes

# (class, [(attack path, expected deny status or None for any deny)]), with the source of each
# class in the test docstrings below.
DOUBLE_SLASH = ["//api/admin", "/api//admin", "/api/admin//", "///api/admin", "//"]
DOT_SEGMENTS = [
    "/api/x/../admin",
    "/api/./admin",
    "/api/admin/.",
    "/api/admin/x/..",
    "/api/x/%2E%2E/admin",
    "/api/x/%2e%2e/admin",
    "/api/x/.%2E/admin",
    "/api/%2E/admin",
    "/api/x/..;/admin",
]
ESCAPED_SLASHES = [
    "/api%2Fadmin",
    "/api%2fadmin",
    "/api/x%2F..%2Fadmin",
    "/api%5Cadmin",
    "/api%5cadmin",
    "/api\\admin",
    "/api/x\\..\\admin",
]
PATH_PARAMETERS = ["/api/admin;x=1", "/api/admin;", "/api/admin;jsessionid=1/users", "/api;/admin"]
FRAGMENTS = ["/api/admin#", "/api/items#/../admin", "/api/admin#x"]
DOUBLE_ENCODING = ["/api%252Fadmin", "/api/x%252F..%252Fadmin", "/api%255Cadmin", "/api/%2561dmin"]
OVERLONG_UTF8 = ["/api%C0%AFadmin", "/api%E0%80%AFadmin", "/api/x%C0%AE%C0%AE%C0%AFadmin", "/api%FF"]
NUL_AND_CONTROL = [
    "/api/admin\x00",
    "/api/admin%00",
    "/api/admin%00.json",
    "/api/admin\t",
    "/api/admin\r\nx-a: b",
    "/api/admin%0D%0A",
    "/api/admin\x7f",
    "/api/admin%7F",
    "/api/admin\u00a0",
]
MALFORMED_ESCAPES = ["/api/admin%", "/api/admin%2", "/api/admin%G0", "/api/%%61dmin", "/api/adm%69n"]
NO_LEADING_SLASH = ["api/admin", "", "*", "http://evil/api/admin", "../api/admin"]


@pytest.mark.parametrize("path", DOUBLE_SLASH)
def test_double_slashes(path: str) -> None:
    """``//admin`` is not ``/admin`` to a matcher but is to many backends.

    Sources: Envoy CVE-2021-29492 / Istio ISTIO-SECURITY-2021-005 (CVE-2021-31920): multiple
    slashes bypassed DENY + paths and ALLOW + notPaths; OPA-Envoy plugin CVE-2026-26205: a
    leading ``//segment`` parsed as an authority and dropped from ``parsed_path``.
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", DOT_SEGMENTS)
def test_dot_segments_plain_and_encoded(path: str) -> None:
    """``/api/x/../admin`` resolves to ``/api/admin`` at the backend.

    Source: Envoy CVE-2019-9901 (no path normalisation before route and RBAC matching; see the
    Envoy postmortem for CVE-2019-9900/9901); ``..;`` is the Tomcat/Spring variant (Apache Shiro
    CVE-2020-1957).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", ESCAPED_SLASHES)
def test_escaped_slashes_and_backslashes(path: str) -> None:
    """``%2F``/``%5C``/``\\`` hide a segment boundary from the matcher, not from the backend.

    Source: Envoy CVE-2021-29492, Istio ISTIO-SECURITY-2021-005 / CVE-2021-31920.
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", PATH_PARAMETERS)
def test_path_parameters(path: str) -> None:
    """``/api/admin;x=1`` is ``/api/admin`` to a Servlet container (matrix parameters).

    Sources: Apache Shiro CVE-2020-1957 and Undertow CVE-2020-1757 (security filters bypassed
    with ``;`` path parameters).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", FRAGMENTS)
def test_fragments(path: str) -> None:
    """A ``#fragment`` is never part of a request path; matching it splits views.

    Source: Envoy CVE-2021-32779 / Istio ISTIO-SECURITY-2021-008 (the fragment was matched as part
    of the path by the authorization filter but stripped by the backend).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", DOUBLE_ENCODING)
def test_double_encoding(path: str) -> None:
    """``%252F`` decodes to ``%2F`` and, at a backend that decodes twice, to ``/``.

    Source: IIS superfluous decoding, CVE-2001-0333 (CERT CA-2001-12): checks ran on the first
    decoding, the server used the second.
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", OVERLONG_UTF8)
def test_overlong_utf8_and_invalid_utf8(path: str) -> None:
    """``%C0%AF`` is an overlong ``/``: invalid UTF-8 that lenient decoders turn into a slash.

    Source: IIS Unicode directory traversal, CVE-2000-0884; RFC 3629 section 10 (decoders must
    reject overlong forms).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", NUL_AND_CONTROL)
def test_nul_and_control_characters(path: str) -> None:
    """A NUL ends a C string: ``/api/admin\\0`` matched as a different string than it routes.

    Source: Envoy CVE-2019-9900 (embedded NUL bypassed header/route matching and ext_authz).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", MALFORMED_ESCAPES)
def test_malformed_and_needless_escapes(path: str) -> None:
    """A broken escape is decoded differently by every backend; ``%61`` spells ``a``.

    Source: the same normalisation class as CVE-2019-9901 / CVE-2021-29492 (RFC 3986 section 2.3:
    unreserved characters are never percent-encoded in a normalised URI).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize("path", NO_LEADING_SLASH)
def test_no_leading_slash(path: str) -> None:
    """Only origin-form paths are matched: relative, empty, ``*`` or absolute-form are refused.

    Source: OPA-Envoy plugin CVE-2026-26205 (a path parsed as a URI lost its first segment).
    """
    assert_outcome(check(path), DENY, 400)


@pytest.mark.parametrize(
    "path", ["/api/admin/", "/api/admin/.json", "/api/admin?x=1", "/api/admin/users?../.."]
)
def test_trailing_slash_and_suffixes_hit_the_deny(path: str) -> None:
    """``/api/admin/`` is ``/api/admin`` to many backends; the DENY names both forms.

    Source: Istio ISTIO-SECURITY-2021-005 (write DENY for ``/admin`` and ``/admin/*``).
    """
    assert_outcome(check(path), DENY, 403)


def test_upper_case_is_not_allowed_by_the_prefix() -> None:
    """Paths compare case-sensitively (Istio semantics); ``/API/admin`` matches no ALLOW.

    Source: Istio security best practices, case normalisation (the path analogue of the host
    case bypass CVE-2021-39155). The residual risk, ``/api/ADMIN`` against a case-insensitive
    backend, is documented in README.md and tested in test_policy_tricks.py.
    """
    assert_outcome(check("/API/admin"), DENY, 403)
    assert_outcome(check("/Api/items"), DENY, 403)


# --------------------------------------------------------------------------- through Envoy

ENVOY_ATTACKS = [
    *DOUBLE_SLASH[:4],
    *DOT_SEGMENTS,
    *[p for p in ESCAPED_SLASHES if "\\" not in p],
    *PATH_PARAMETERS,
    *FRAGMENTS,
    *DOUBLE_ENCODING,
    *OVERLONG_UTF8,
    "/api/admin%00",
    "/api/admin%0D%0A",
    *MALFORMED_ESCAPES,
    "/api/admin/",
    "/API/admin",
    "http://evil/api/admin",
]
ENVOY_RAW_ATTACKS = [
    b"/api\\admin",
    b"/api/x\\..\\admin",
    b"/api/admin\x00",
    b"/api/admin\x01",
    b"/api/admin\x7f",
    b"/api/adm\xc3\xadn",
    b"api/admin",
    b"*",
]


@pytest.fixture(scope="module")
def stack(envoy_stack_factory: Callable[[Mapping[str, str]], EnvoyStack]) -> EnvoyStack:
    return envoy_stack_factory({"policy.yaml": POLICY})


@needs_envoy
@pytest.mark.e2e
def test_envoy_control(stack: EnvoyStack) -> None:
    r = stack.request("frontend", "GET", "/api/items")
    assert r.status == 200, r
    assert [e.path for e in stack.echo.requests] == ["/api/items"]
    stack.assert_blocked(stack.request("frontend", "GET", "/api/admin"))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize("path", ENVOY_ATTACKS)
def test_envoy_path_attacks(stack: EnvoyStack, path: str) -> None:
    """Every path class above, through Envoy's own normalisation (sources as above)."""
    stack.assert_blocked(stack.request("frontend", "GET", path))


@needs_envoy
@pytest.mark.e2e
@pytest.mark.parametrize("path", ENVOY_RAW_ATTACKS, ids=repr)
def test_envoy_raw_path_attacks(stack: EnvoyStack, path: bytes) -> None:
    """Bytes ``http.client`` refuses to send: backslash, NUL (CVE-2019-9900), DEL, raw UTF-8."""
    req = b"GET " + path + b" HTTP/1.1\r\nHost: api.shop.svc\r\nConnection: close\r\n\r\n"
    stack.assert_blocked(stack.raw("frontend", req))


@needs_envoy
@pytest.mark.e2e
def test_envoy_long_path_is_refused(stack: EnvoyStack) -> None:
    """A 45 KB path of valid %-escapes under /api/ (within Envoy's 60 KiB header limit) was
    allowed, at ~17 ms of extauthz CPU per request (issue 13). Paths over 8 KiB are answered
    400 with a reason; nothing reaches the upstream."""
    r = stack.request("frontend", "GET", "/api/" + "%E2%82%AC" * 5000)
    assert r.status == 400, r
    stack.assert_blocked(r)
    deadline = time.monotonic() + 10.0  # the audit writer is asynchronous: wait for the record
    while True:
        found = [r for r in stack.authz.audit_records() if "longer than" in (r.get("error") or "")]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert found and found[-1]["reason"] == "invalid_request"
