"""The request view and the canonical-path check."""

from __future__ import annotations

import pytest

from extauthz.envoy.request import from_check_request, namespace_of, path_problem, split_host
from extauthz.tools.samples import check_request

CANONICAL = [
    "/",
    "/api/items",
    "/api/items/42",
    "/caf%C3%A9",
    "/a:b@c!$&'()*+,=",
    "/x/%20y",
    "/with.dot/and..dots/file.txt",
    "/.well-known/openid-configuration",
    "/a/.b/..c/...",
    "/a/b/",
]

NOT_CANONICAL = [
    ("", "does not start"),
    ("api/items", "does not start"),
    ("*", "does not start"),
    ("//api", "empty path segment"),
    ("/api//items", "empty path segment"),
    ("/api/./items", "dot segment"),
    ("/api/../admin", "dot segment"),
    ("/api/..", "dot segment"),
    ("/.", "dot segment"),
    ("/..", "dot segment"),
    ("/a/.", "dot segment"),
    ("/../a", "dot segment"),
    ("/api\\..\\admin", "backslash"),
    ("/api%2Fadmin", "encoded slash"),
    ("/api%2fadmin", "lower-case"),
    ("/api%5Cadmin", "encoded slash"),
    ("/%61dmin", "encoded unreserved"),
    ("/%41DMIN", "encoded unreserved"),
    ("/api%2E%2E/admin", "encoded unreserved"),
    ("/api%7E", "encoded unreserved"),
    ("/api#frag", "fragment"),
    ("/api\x00", "control"),
    ("/api\r\nx: y", "control"),
    ("/api\x7f", "control"),
    ("/api%00", "encoded control"),
    ("/api%0A", "encoded control"),
    ("/api%", "malformed"),
    ("/api%2", "malformed"),
    ("/api%zz", "malformed"),
    ("/api%%41", "malformed"),
    ("/caf\u00e9", "non-ASCII"),
    ("/a b", "not allowed"),
    ('/a"b', "not allowed"),
    ("/a<b>", "not allowed"),
    ("/a/b;c=d", "path parameter"),
    ("/admin;", "path parameter"),
    ("/a%252Fb", "double-encoded"),
    ("/a%2541", "double-encoded"),
    ("/a%C0%AFb", "UTF-8"),
    ("/a%E0%80%AF", "UTF-8"),
    ("/a%FF", "UTF-8"),
    ("/caf%C3", "UTF-8"),
]


@pytest.mark.parametrize("path", CANONICAL)
def test_canonical_paths_pass(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(("path", "why"), NOT_CANONICAL)
def test_non_canonical_paths_are_named(path: str, why: str) -> None:
    problem = path_problem(path)
    assert problem is not None
    assert why in problem


def test_view_splits_query_normalises_host_keeps_method_as_sent() -> None:
    msg = check_request(path="/api/items?x=1&y=%2F", host="API.Shop.SVC:8443", method="get")
    view = from_check_request(msg)
    assert view.path == "/api/items"
    assert view.query == "x=1&y=%2F"
    assert view.raw_path == "/api/items?x=1&y=%2F"
    assert view.problem is None  # the query is not part of the path check
    assert view.host == "api.shop.svc"
    assert view.method == "get"  # Envoy compares :method exactly; a DENY folds case itself
    assert view.source.principal == "spiffe://example.org/ns/shop/sa/frontend"
    assert view.source.address == "10.0.0.5"
    assert view.port == 8443


def test_view_headers_are_lower_case_and_immutable() -> None:
    view = from_check_request(check_request(headers={"X-Custom": "v"}))
    assert view.headers["x-custom"] == "v"
    with pytest.raises(TypeError):
        view.headers["x-custom"] = "other"  # type: ignore[index]


def test_method_that_is_not_a_token_is_a_problem() -> None:
    assert from_check_request(check_request(method="GET /x")).problem is not None
    assert from_check_request(check_request(method="")).problem is not None


def test_path_with_query_trick_still_checked() -> None:
    view = from_check_request(check_request(path="/api/../admin?/api/items"))
    assert view.path == "/api/../admin"
    assert view.problem is not None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com:443", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8080", "[::1]"),
        (" example.com ", "example.com"),
    ],
)
def test_split_host(host: str, expected: str) -> None:
    assert split_host(host) == expected


def test_namespace_from_context_extensions_wins() -> None:
    view = from_check_request(check_request(context_extensions={"namespace": "billing"}))
    assert view.namespace == "billing"
    view = from_check_request(check_request())
    assert view.namespace == "shop"  # from spiffe://example.org/ns/shop/sa/api


def test_namespace_of() -> None:
    assert namespace_of("spiffe://td/ns/a/sa/b") == "a"
    assert namespace_of("td/ns/a/sa/b") == "a"
    assert namespace_of("spiffe://td/sa/b") == ""
    assert namespace_of("ns/a") == ""  # needs a segment before "ns"


@pytest.mark.parametrize(
    "host", ["a.svc:1:2", "x@a.svc", "a.svc:abc", "a.svc..", "a.svc,b.svc", "[a.svc]", " a.svc", "a.svc%2E"]
)
def test_malformed_hosts_are_not_canonical(host: str) -> None:
    assert from_check_request(check_request(host=host)).problem == "malformed host"


@pytest.mark.parametrize("host", ["a.svc", "A.Svc.:8443", "[::1]:80", "[::1]", "10.0.0.1:80", "a_b.svc", ""])
def test_wellformed_hosts_pass(host: str) -> None:
    assert from_check_request(check_request(host=host)).problem is None


def test_header_names_folding_to_one_are_not_canonical() -> None:
    view = from_check_request(check_request(headers={"X-Role": "admin", "x-role": "user"}))
    assert view.problem == "header names repeated in different case"


def test_raw_header_map_is_joined_and_canonical() -> None:
    msg = check_request()
    http = msg.attributes.request.http
    http.ClearField("headers")
    for k, v in ((":path", "/api/items"), ("x-role", "user"), ("x-role", "admin")):
        http.header_map.headers.add(key=k, raw_value=v.encode())
    view = from_check_request(msg)
    assert view.problem is None
    assert view.headers["x-role"] == "user,admin"
