"""jwksUri: fetched from a local server with a bounded timeout, cached, and refreshed on an
unknown kid at most once per interval (a kid flood must not cause a fetch per request)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.identity import (
    RSA_KEY,
    RSA_KEY_2,
    JwksServer,
    bearer,
    claims,
    inline_rule,
    jwk,
    jwks_json,
    mint,
    request_authn,
    resolve,
    resolver,
)

from extauthz.identity.keys import JwksRegistry, RemoteJwks


@pytest.fixture
def server() -> Iterator[JwksServer]:
    s = JwksServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _rule(uri: str) -> str:
    return request_authn(f'{{issuer: "https://issuer.example", audiences: ["api.shop"], jwksUri: "{uri}"}}')


def test_jwks_uri_fetched_once_and_cached(server: JwksServer) -> None:
    r = resolver(_rule(server.uri), jwks=JwksRegistry(min_refresh_interval=60))
    for _ in range(50):
        res = resolve(r, headers=bearer(mint()))
        assert res.identity.token is not None, res
    assert server.requests == 1


def test_unknown_kid_flood_fetches_at_most_once_per_interval(server: JwksServer) -> None:
    r = resolver(_rule(server.uri), jwks=JwksRegistry(min_refresh_interval=60))
    assert resolve(r, headers=bearer(mint())).identity.token is not None
    assert server.requests == 1
    for i in range(300):
        res = resolve(r, headers=bearer(mint(kid=f"flood-{i}")))
        assert res.status == 401
    time.sleep(0.2)  # let any (wrongly) started background fetch land
    assert server.requests <= 2, server.requests


def test_unknown_kid_after_interval_picks_up_a_rotated_key(server: JwksServer) -> None:
    clock = [1000.0]
    remote = RemoteJwks(server.uri, min_refresh_interval=30, clock=lambda: clock[0])
    remote.start()
    assert remote.keys("k1") is not None and server.requests == 1
    server.body = jwks_json(jwk(RSA_KEY, "k1"), jwk(RSA_KEY_2, "k2"))
    ks = remote.keys("k2")  # within the interval: no fetch
    assert ks is not None and not ks.has_kid("k2") and server.requests == 1
    clock[0] += 31
    ks = remote.keys("k2")
    assert ks is not None and ks.has_kid("k2") and server.requests == 2
    clock[0] += 1
    assert remote.keys("k3") is not None and server.requests == 2


def test_slow_jwks_server_bounds_the_wait(server: JwksServer) -> None:
    server.delay = 2.0
    r = resolver(_rule(server.uri), jwks=JwksRegistry(wait=0.2, timeout=1.0))
    start = time.monotonic()
    res = resolve(r, headers=bearer(mint()))
    assert time.monotonic() - start < 1.5
    assert res.status == 401  # no keys yet: rejected, never accepted


def test_unreachable_jwks_rejects_tokens() -> None:
    r = resolver(_rule("http://127.0.0.1:9/keys"), jwks=JwksRegistry(wait=0.5, timeout=0.5))
    assert resolve(r, headers=bearer(mint(claims()))).status == 401


def test_only_http_uris() -> None:
    r = resolver(_rule("file:///etc/passwd"))
    assert resolve(r, headers=bearer(mint())).status == 401


def test_redirect_to_a_non_http_url_refused(server: JwksServer, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(jwks_json(jwk(RSA_KEY, "k1")))
    server.redirect = keys.as_uri()
    r = resolver(_rule(server.uri), jwks=JwksRegistry(wait=1.0))
    assert resolve(r, headers=bearer(mint())).status == 401


def test_token_without_kid_tries_a_bounded_number_of_keys() -> None:
    many = [jwk(RSA_KEY_2, f"x{i}") for i in range(20)] + [jwk(RSA_KEY, "k1")]
    ra = request_authn(inline_rule(*many))
    # The right key is the 21st: a kid-less token is not tried against all of them.
    assert resolve(resolver(ra), headers=bearer(mint(kid=None))).status == 401
    assert resolve(resolver(ra), headers=bearer(mint(kid="k1"))).status == 200
