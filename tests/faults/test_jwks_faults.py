"""Faults at the jwksUri endpoint: it hangs, then returns garbage (not JSON, then a JWKS with the
wrong key). Every check with a token the service cannot verify is a 401 deny, answered within
Envoy's default ext_authz deadline (0.25 s from ``extauthz envoy-config``), never an allow and
never an exception, with a reason in the audit record; once the endpoint is fixed, the next
refresh brings the keys and the same token is allowed again.

In-process (``CheckCore`` with a ``JwksRegistry`` whose refresh interval is short): a served
process refreshes an unknown key set at most once per 30 s, too slow for a CI test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.identity.keys import JwksRegistry
from extauthz.identity.resolver import IdentityContext
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

pytestmark = pytest.mark.faults

ENVOY_DEADLINE_S = 0.25
ISSUER = "https://issuer.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: Any) -> bytes:
    d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    d["kid"] = "k1"
    return json.dumps({"keys": [d]}).encode()


class Endpoint:
    """A loopback jwksUri whose behaviour the test switches: good, hang, not-json, wrong-key."""

    def __init__(self) -> None:
        self.mode = "hang"
        self.requests = 0
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                mode = outer.mode
                if mode == "hang":
                    outer.release.wait(10)  # bounded: the test releases it at the end
                    return
                body = {"good": _jwks(KEY), "wrong-key": _jwks(OTHER)}.get(mode, b'{"keys": [')
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/keys"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.close()


def _policies(uri: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: istio-system}}
spec:
  jwtRules:
  - {{issuer: "{ISSUER}", audiences: ["api.shop"], jwksUri: "{uri}"}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: users, namespace: shop}}
spec:
  action: ALLOW
  rules: [{{from: [{{source: {{requestPrincipals: ["{ISSUER}/user-1"]}}}}]}}]
"""


def _token() -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "sub": "user-1", "aud": "api.shop", "iat": now, "exp": now + 600}
    return jwt.encode(payload, KEY, algorithm="RS256", headers={"kid": "k1"})


def _check(core: CheckCore, token: str) -> tuple[int, dict[str, Any], float]:
    data = check_request(headers={"authorization": f"Bearer {token}"}).SerializeToString()
    start = time.monotonic()
    body, record, _ = core.check(data)
    elapsed = time.monotonic() - start
    resp = ext.CheckResponse.FromString(body)
    status = 200 if resp.status.code == 0 else resp.denied_response.status.code
    return status, record, elapsed


def _until_allowed(core: CheckCore, token: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _check(core, token)[0] == 200:
            return True
        time.sleep(0.05)
    return False


def test_jwks_endpoint_hanging_then_garbage_denies_in_time_and_recovers(endpoint: Endpoint) -> None:
    engine = compile_policies(load_text(_policies(endpoint.uri)))
    # The service's own defaults (wait, timeout), except refresh intervals short enough for CI
    # (a set holding our kid with the wrong key is replaced only when it grows old: ttl).
    jwks = JwksRegistry(min_refresh_interval=0.3, ttl=1.0)
    core = CheckCore(lambda: engine, IdentityContext(jwks=jwks))
    token = _token()
    seen: dict[str, int] = {}
    for mode in ("hang", "not-json", "wrong-key"):
        endpoint.mode = mode
        before = endpoint.requests
        end = time.monotonic() + 1.5  # long enough for several refresh attempts
        n = 0
        while time.monotonic() < end or endpoint.requests == before:
            status, record, elapsed = _check(core, token)
            n += 1
            assert status == 401, (mode, status, record)
            assert record["allowed"] is False and record["status"] == 401
            assert record["reason"] == "invalid_token", record
            assert elapsed < ENVOY_DEADLINE_S, (mode, elapsed)
            assert token not in json.dumps(record)
            time.sleep(0.02)
            if time.monotonic() > end + 5:
                pytest.fail(f"{mode}: the endpoint was never asked again")
        seen[mode] = n
    # Fixed: the next refresh brings the key; the same token is allowed.
    endpoint.mode = "good"
    assert _until_allowed(core, token), "no recovery once the endpoint was fixed"
    # And a later breakage keeps the last good set (the token stays valid).
    endpoint.mode = "not-json"
    time.sleep(0.4)
    assert _check(core, token)[0] == 200
    print(f"jwks faults: checks denied per mode {seen}, endpoint requests {endpoint.requests}")
