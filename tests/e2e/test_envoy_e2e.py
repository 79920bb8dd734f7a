"""End to end: client --mTLS--> real Envoy --ext_authz gRPC--> extauthz; Envoy --> echo upstream."""

from __future__ import annotations

import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    FRONTEND_ID,
    INTRUDER_ID,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    HttpResult,
    envoy_binary,
    https_request,
    write_policies,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
"""

# Generous: a slow CI machine must not turn into spurious 403s (status_on_error).
CHECK_TIMEOUT_S = 2.0


@dataclass
class Stack:
    pki: DevPki
    echo: EchoServer
    authz: ExtauthzProcess
    envoy: EnvoyProcess

    def request(
        self,
        who: str | None,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> HttpResult:
        return https_request(
            self.envoy.listen_port,
            method,
            path,
            ca_file=self.pki.ca_file,
            client=self.pki.files[who] if who is not None else None,
            headers=list(headers),
            body=body,
        )


# The whole suite runs against every transport (`serve --transport`).
TRANSPORTS = ["grpcio", "h2corn"]


def _start_stack(
    base: Path, pki: DevPki, echo: EchoServer, transport: str = "grpcio"
) -> tuple[ExtauthzProcess, EnvoyProcess]:
    policies = write_policies(base / "policies", {"frontend-to-api.yaml": POLICY})
    authz = ExtauthzProcess(
        policies,
        base / "extauthz",
        extra_args=["--trust-bundle", f"example.org={pki.ca_file}", "--transport", transport],
    ).start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=CHECK_TIMEOUT_S,
        ).start()
    except BaseException:
        authz.stop()
        raise
    return authz, envoy


@pytest.fixture(scope="module", params=TRANSPORTS)
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    pki: DevPki,
    echo_server: EchoServer,
) -> Iterator[Stack]:
    authz, envoy = _start_stack(tmp_path_factory.mktemp("e2e"), pki, echo_server, request.param)
    try:
        yield Stack(pki, echo_server, authz, envoy)
    finally:
        envoy.stop()
        authz.stop()


@pytest.fixture
def s(stack: Stack) -> Stack:
    """The shared stack, with the echo server's request log cleared."""
    stack.echo.clear()
    return stack


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------- decisions


def test_frontend_get_api_is_allowed_with_identity_header(s: Stack) -> None:
    r = s.request("frontend", "GET", "/api/items")
    assert r.status == 200, r
    doc = r.json()
    assert doc["path"] == "/api/items"
    assert doc["headers"].get("x-spiffe-id") == FRONTEND_ID
    [seen] = s.echo.requests
    assert seen.header_values("x-spiffe-id") == [FRONTEND_ID]


def test_intruder_is_denied(s: Stack) -> None:
    r = s.request("intruder", "GET", "/api/items")
    assert r.status == 403, r
    assert s.echo.requests == []


def test_post_is_denied(s: Stack) -> None:
    r = s.request("frontend", "POST", "/api/items", body=b"{}")
    assert r.status == 403, r
    assert s.echo.requests == []


def test_other_path_is_denied(s: Stack) -> None:
    r = s.request("frontend", "GET", "/admin")
    assert r.status == 403, r
    assert s.echo.requests == []


def test_api_workload_not_in_policy_is_denied(s: Stack) -> None:
    r = s.request("api", "GET", "/api/items")
    assert r.status == 403, r


# --------------------------------------------------------------------------- header spoofing


@pytest.mark.parametrize(
    "spoof",
    [
        [("x-spiffe-id", "spiffe://evil/x")],
        [("X-SPIFFE-ID", "spiffe://evil/x")],
        [("x-spiffe-id", "spiffe://evil/x"), ("x-spiffe-id", "spiffe://evil/y")],
        [("x-spiffe-id", FRONTEND_ID + ",spiffe://evil/x")],
    ],
    ids=["lower", "upper", "repeated", "comma"],
)
def test_client_sent_spiffe_id_never_reaches_upstream(s: Stack, spoof: list[tuple[str, str]]) -> None:
    r = s.request("frontend", "GET", "/api/items", headers=spoof)
    assert r.status == 200, r
    assert r.json()["headers"].get("x-spiffe-id") == FRONTEND_ID
    [seen] = s.echo.requests
    assert seen.header_values("x-spiffe-id") == [FRONTEND_ID]


def test_spoofed_header_does_not_grant_access(s: Stack) -> None:
    r = s.request("intruder", "GET", "/api/items", headers=[("x-spiffe-id", FRONTEND_ID)])
    assert r.status == 403, r
    assert s.echo.requests == []


# --------------------------------------------------------------------------- Envoy path handling


def test_merged_slashes_reach_upstream_normalised(s: Stack) -> None:
    r = s.request("frontend", "GET", "//api//items")
    assert r.status == 200, r
    assert r.json()["path"] == "/api/items"


def test_dot_segments_are_resolved_before_the_check(s: Stack) -> None:
    r = s.request("frontend", "GET", "/api/../admin")
    assert r.status == 403, r
    assert s.echo.requests == []


def test_escaped_slashes_are_rejected_by_envoy(s: Stack) -> None:
    r = s.request("frontend", "GET", "/api/x%2F..%2F..%2Fadmin")
    assert r.status == 400, r
    assert s.echo.requests == []


def test_client_without_certificate_cannot_connect(s: Stack) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        s.request(None, "GET", "/api/items")
    assert s.echo.requests == []


# --------------------------------------------------------------------------- audit


def _principal(rec: dict[str, Any]) -> Any:
    return (rec.get("source") or {}).get("principal")


def _path(rec: dict[str, Any]) -> Any:
    return (rec.get("request") or {}).get("path")


def test_audit_log_has_one_line_per_decision(s: Stack) -> None:
    # Let records of earlier tests land first.
    time.sleep(0.3)
    before = len(s.authz.audit_records())
    assert s.request("frontend", "GET", "/api/audit-allow").status == 200
    assert s.request("intruder", "GET", "/api/audit-deny").status == 403
    records = s.authz.wait_audit(before + 2, timeout=5.0)
    time.sleep(0.3)
    records = s.authz.audit_records()
    new = records[before:]
    assert len(new) == 2, new
    allow = next(r for r in new if _path(r) == "/api/audit-allow")
    deny = next(r for r in new if _path(r) == "/api/audit-deny")
    assert allow["allowed"] is True
    assert _principal(allow) == FRONTEND_ID
    assert deny["allowed"] is False
    assert _principal(deny) == INTRUDER_ID
    for rec in (allow, deny):
        assert "status" in rec and "reason" in rec
    # Every line of the whole log is a JSON object with a boolean decision.
    assert all(isinstance(r.get("allowed"), bool) for r in records)


# --------------------------------------------------------------------------- fail closed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fail_closed_when_the_service_is_down(
    tmp_path: Path, pki: DevPki, echo_server: EchoServer, transport: str
) -> None:
    authz, envoy = _start_stack(tmp_path, pki, echo_server, transport)
    try:
        stack = Stack(pki, echo_server, authz, envoy)
        assert stack.request("frontend", "GET", "/api/items").status == 200
        authz.stop()
        echo_server.clear()
        for _ in range(3):
            r = stack.request("frontend", "GET", "/api/items")
            assert r.status == 403, r
        assert echo_server.requests == []
        stats = envoy.stats()
        errors = sum(v for k, v in stats.items() if k.endswith("ext_authz.extauthz.error"))
        assert errors >= 3, {k: v for k, v in stats.items() if "ext_authz" in k}
    finally:
        envoy.stop()
        authz.stop()


# --------------------------------------------------------------------------- unix socket


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_service_over_unix_socket(
    transport: str,
    tmp_path: Path,
    pki: DevPki,
    echo_server: EchoServer,
    extauthz_factory: Callable[..., ExtauthzProcess],
    envoy_factory: Callable[..., EnvoyProcess],
) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="extauthz-", dir="/tmp"))  # short: sun_path limit
    procs: list[ExtauthzProcess | EnvoyProcess] = []
    try:
        policies = write_policies(tmp_path / "policies", {"frontend-to-api.yaml": POLICY})
        authz = extauthz_factory(
            policies, unix_socket=sock_dir / "authz.sock", extra_args=["--transport", transport]
        )
        procs.append(authz)
        envoy = envoy_factory(
            [authz.endpoint], context_extensions={"namespace": "shop"}, timeout_s=CHECK_TIMEOUT_S
        )
        procs.insert(0, envoy)
        stack = Stack(pki, echo_server, authz, envoy)
        echo_server.clear()
        r = stack.request("frontend", "GET", "/api/items")
        assert r.status == 200, r
        assert r.json()["headers"].get("x-spiffe-id") == FRONTEND_ID
        assert stack.request("intruder", "GET", "/api/items").status == 403
    finally:
        for proc in procs:
            proc.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
