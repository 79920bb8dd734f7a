"""The attack kit: helpers for the attack catalogue: run a request through the Check core, or through Envoy.

Every case is (request, the policy it attacks, the secure outcome). ``run_core`` answers through
``extauthz.pipeline.CheckCore`` on serialized ``CheckRequest`` bytes, exactly what the gRPC handler
hands it; ``envoy_stack`` (module scope, per test module) runs client -> real Envoy -> extauthz.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.decision import Decision
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request
from helpers import (
    LOOPBACK,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    HttpResult,
    client_context,
    envoy_binary,
    https_request,
    write_policies,
)

ALLOW = "allow"
DENY = "deny"


@dataclass(frozen=True)
class Outcome:
    """What the Check core answered, decoded back from the CheckResponse bytes."""

    allowed: bool
    status: int
    reason: str
    decision: Decision
    response: ext.CheckResponse = field(repr=False)


@functools.lru_cache(maxsize=64)
def core_for(policy_yaml: str) -> CheckCore:
    engine = compile_policies(load_text(policy_yaml))
    return CheckCore(lambda: engine)


def run_core(policy_yaml: str, **request: Any) -> Outcome:
    """Serialize ``check_request(**request)`` and answer it with the Check core."""
    data = check_request(**request).SerializeToString()
    body, record, decision = core_for(policy_yaml).check(data)
    resp = ext.CheckResponse.FromString(body)
    allowed = resp.status.code == 0
    # The three views of one decision must agree, or the test itself is meaningless.
    assert allowed == decision.allowed == record["allowed"], (resp, decision, record)
    if not allowed:
        assert resp.WhichOneof("http_response") == "denied_response"
        # Every deny is explained in the audit record: a reason, and for a refused request why.
        assert record["reason"] not in ("", None, "allowed"), record
        if record["reason"] == "invalid_request":
            assert record["error"], record
    status = 200 if allowed else int(resp.denied_response.status.code)
    return Outcome(allowed, status, decision.reason, decision, resp)


def assert_outcome(out: Outcome, expected: str, status: int | None = None) -> None:
    if expected == ALLOW:
        assert out.allowed, f"expected allow, got {out.status} {out.reason}: {out.decision.error}"
        return
    assert not out.allowed, f"ATTACK ALLOWED ({out.reason}, policy {out.decision.policy})"
    if status is not None:
        assert out.status == status, (out.status, out.reason, out.decision.error)


# --------------------------------------------------------------------------- through Envoy

needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed")


@dataclass
class EnvoyStack:
    pki: DevPki
    echo: EchoServer
    authz: ExtauthzProcess
    envoy: EnvoyProcess

    def request(
        self,
        who: str,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]] = (),
    ) -> HttpResult:
        self.echo.clear()
        return https_request(
            self.envoy.listen_port,
            method,
            path,
            ca_file=self.pki.ca_file,
            client=self.pki.files[who],
            headers=list(headers),
        )

    def raw(self, who: str, request: bytes, timeout: float = 5.0) -> int:
        """Send ``request`` verbatim over mTLS; return the response status (0: closed, no answer).

        For bytes that ``http.client`` refuses to send (NUL, control characters, odd spacing).
        """
        self.echo.clear()
        files = self.pki.files[who]
        ctx = client_context(self.pki.ca_file, files.chain, files.key)
        sock = socket.create_connection((LOOPBACK, self.envoy.listen_port), timeout=timeout)
        with sock, ctx.wrap_socket(sock, server_hostname=LOOPBACK) as tls:
            tls.sendall(request)
            data = b""
            try:
                while b"\r\n" not in data:
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except (ConnectionError, OSError):
                pass
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0

    def assert_blocked(self, result: HttpResult | int) -> None:
        """The secure outcome of an attack through Envoy: a 4xx/5xx or a closed connection (0),
        and nothing reached the upstream."""
        status = result if isinstance(result, int) else result.status
        body = b"" if isinstance(result, int) else result.body[:200]
        assert status == 0 or status >= 400, f"ATTACK ALLOWED through Envoy: {status} {body!r}"
        assert self.echo.requests == [], self.echo.requests


def start_envoy_stack(
    base: Path, pki: DevPki, echo: EchoServer, policies: Mapping[str, str]
) -> EnvoyStack:
    policy_dir = write_policies(base / "policies", dict(policies))
    authz = ExtauthzProcess(policy_dir, base / "extauthz").start()
    try:
        envoy = EnvoyProcess(
            base / "envoy",
            upstream=echo.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=2.0,  # generous: a slow machine must not turn into spurious 403s
        ).start()
    except BaseException:
        authz.stop()
        raise
    return EnvoyStack(pki, echo, authz, envoy)


