"""Policy-level tricks: requests aimed at what a policy's patterns mean rather than at parsing.

Each test names the policy it attacks. Most have a secure outcome of deny. A few pin down Istio's
documented semantics that remain a risk with a careless policy (``test_residual_*``): those assert
today's behaviour so a change is deliberate, and README.md says how to write the policy instead.
"""

from __future__ import annotations

import pytest
from helpers.attacks import ALLOW, DENY, assert_outcome, run_core


def policy(action: str, rule: str, name: str = "p", namespace: str = "shop") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec:\n  action: {action}\n  rules:\n  - {rule}\n"
    )


def both(*docs: str) -> str:
    return "---\n".join(docs)


ALLOW_API_SLASH = policy("ALLOW", 'to: [{operation: {paths: ["/api/*"]}}]')
ALLOW_API_LOOSE = policy("ALLOW", 'to: [{operation: {paths: ["/api*"]}}]')
ALLOW_NOT_ADMIN = policy("ALLOW", 'to: [{operation: {notPaths: ["/admin"]}}]')
ALLOW_NOT_ADMIN_TREE = policy("ALLOW", 'to: [{operation: {notPaths: ["/admin", "/admin/*"]}}]')
NAIVE_DENY = both(
    policy("ALLOW", 'to: [{operation: {paths: ["/api/*"]}}]', "a"),
    policy("DENY", 'to: [{operation: {paths: ["/api/admin"]}}]', "d"),
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/items", ALLOW), ("/api-admin", DENY), ("/api", DENY), ("/apix/items", DENY)],
)
def test_prefix_with_slash_does_not_cover_siblings(path: str, expected: str) -> None:
    """``/api/*`` vs ``/api-admin``: a prefix that ends in ``/`` admits only the subtree.

    Source: Istio ISTIO-SECURITY-2021-005 guidance (prefer ALLOW with precise paths).
    """
    assert_outcome(run_core(ALLOW_API_SLASH, path=path), expected)


def test_residual_prefix_without_slash_covers_siblings() -> None:
    """``/api*`` is a string prefix (Istio semantics): it admits ``/api-admin`` too.

    Documented pitfall; write ``/api/*`` (and ``/api`` if needed). Source: Istio
    AuthorizationPolicy reference (prefix match is a string prefix).
    """
    assert_outcome(run_core(ALLOW_API_LOOSE, path="/api-admin"), ALLOW)


@pytest.mark.parametrize(
    "path", ["//admin", "/admin;x=1", "/%61dmin", "/x/../admin", "/admin%2F", "/admin#", "/./admin"]
)
def test_not_paths_cannot_be_dodged_by_spelling(path: str) -> None:
    """ALLOW + ``notPaths: [/admin]`` is the pattern ISTIO-SECURITY-2021-005 / CVE-2021-31920 named
    as vulnerable: any other spelling of ``/admin`` is refused as non-canonical."""
    assert_outcome(run_core(ALLOW_NOT_ADMIN, path=path), DENY, 400)


@pytest.mark.parametrize(
    ("path", "expected"), [("/admin", DENY), ("/admin/", DENY), ("/admin/x", DENY), ("/x", ALLOW)]
)
def test_not_paths_written_for_the_subtree(path: str, expected: str) -> None:
    """The recommended form ``notPaths: [/admin, /admin/*]`` covers the trailing-slash form."""
    assert_outcome(run_core(ALLOW_NOT_ADMIN_TREE, path=path), expected)


def test_residual_not_paths_exact_leaves_trailing_slash() -> None:
    """With ``notPaths: [/admin]`` only, ``/admin/`` is another path (Istio semantics)."""
    assert_outcome(run_core(ALLOW_NOT_ADMIN, path="/admin/"), ALLOW)


@pytest.mark.parametrize("path", ["/api/admin/", "/api/ADMIN"])
def test_residual_naive_deny(path: str) -> None:
    """DENY ``/api/admin`` alone misses ``/api/admin/`` and ``/api/ADMIN`` (paths are exact and
    case-sensitive in Istio). Sources: ISTIO-SECURITY-2021-005; Istio best practices on case
    normalisation. Write ``[/api/admin, /api/admin/*]`` and keep ALLOW lists tight."""
    assert_outcome(run_core(NAIVE_DENY, path=path), ALLOW)


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/api/a/items", ALLOW), ("/api/a/b/items", DENY), ("/api/items", DENY), ("/api/a/items/x", DENY)],
)
def test_single_segment_template(path: str, expected: str) -> None:
    """``{*}`` is exactly one segment; it never spans a ``/`` (Istio path templates)."""
    doc = policy("ALLOW", 'to: [{operation: {paths: ["/api/{*}/items"]}}]')
    assert_outcome(run_core(doc, path=path), expected)


def test_empty_spec_allow_matches_nothing() -> None:
    """``spec: {}`` on ALLOW denies everything (Istio semantics)."""
    doc = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: nothing, namespace: shop}\nspec: {}\n"
    )
    assert_outcome(run_core(doc), DENY, 403)


def test_policy_of_another_namespace_does_not_apply() -> None:
    """A broad ALLOW in namespace ``other`` never opens namespace ``shop``."""
    doc = policy("ALLOW", "{}", namespace="other")
    assert_outcome(run_core(doc), DENY, 403)
    assert_outcome(run_core(doc, context_extensions={"namespace": "other"}), ALLOW)


def test_namespace_comes_from_envoy_not_from_a_header() -> None:
    """The destination namespace is Envoy's route setting or the destination principal."""
    doc = policy("ALLOW", "{}", namespace="other")
    out = run_core(doc, headers={"x-namespace": "other", "x-envoy-namespace": "other"})
    assert_outcome(out, DENY, 403)


def test_deny_with_not_values_fires_when_the_header_is_absent() -> None:
    """DENY unless ``x-token == secret``: leaving the header out must not dodge the DENY."""
    doc = both(
        policy("ALLOW", "{}", "a"),
        policy("DENY", 'when: [{key: "request.headers[x-token]", notValues: ["secret"]}]', "d"),
    )
    assert_outcome(run_core(doc), DENY, 403)
    assert_outcome(run_core(doc, headers={"x-token": ""}), DENY, 403)
    assert_outcome(run_core(doc, headers={"x-token": "secret"}), ALLOW)


def test_port_comes_from_the_destination_not_the_host_header() -> None:
    """ALLOW ``ports: [8443]``: a ``Host: x:8443`` to another port is not port 8443."""
    doc = policy("ALLOW", 'to: [{operation: {ports: ["8443"]}}]')
    assert_outcome(run_core(doc, host="api.shop.svc:8443", destination_port=9000), DENY, 403)
    assert_outcome(run_core(doc, host="api.shop.svc", destination_port=8443), ALLOW)


def test_residual_principal_prefix_without_slash() -> None:
    """``principals: [.../sa/frontend*]`` is a string prefix: it admits ``.../sa/frontend-evil``.

    Documented pitfall (Istio semantics); use exact principals or a prefix ending in ``/``.
    """
    doc = policy("ALLOW", 'from: [{source: {principals: ["example.org/ns/shop/sa/frontend*"]}}]')
    out = run_core(doc, principal="spiffe://example.org/ns/shop/sa/frontend-evil")
    assert_outcome(out, ALLOW)


def test_no_policy_at_all_denies() -> None:
    """Zero trust: with no ALLOW policy, nothing is allowed (Istio would allow)."""
    doc = policy("DENY", 'to: [{operation: {paths: ["/nothing"]}}]')
    assert_outcome(run_core(doc), DENY, 403)
