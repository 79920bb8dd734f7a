"""Shared helpers for identity tests: keys, tokens (honest and forged), requests, resolvers."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from extauthz.devenv.ca import Issued
from extauthz.envoy.request import RequestView, from_check_request
from extauthz.identity.bundles import BundleSet, TrustBundle
from extauthz.identity.keys import JwksRegistry
from extauthz.identity.resolver import IdentityResolver, Resolution
from extauthz.identity.xfcc import TrustedProxies
from extauthz.policy import load_text
from extauthz.tools.samples import check_request

ISSUER = "https://issuer.example"
AUDIENCE = "api.shop"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    else:
        d = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    d["kid"] = kid
    d.update(extra)
    return d


def jwks_json(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def mint(
    payload: Mapping[str, Any] | None = None,
    *,
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "k1",
    headers: Mapping[str, Any] | None = None,
) -> str:
    h = dict(headers or {})
    if kid is not None:
        h["kid"] = kid
    return jwt.encode(dict(payload if payload is not None else claims()), key, algorithm=alg, headers=h)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header_json: str, payload_json: str, signature: bytes = b"x") -> str:
    """A token with exactly these JSON texts (duplicate keys and all) and any signature."""
    return f"{b64(header_json.encode())}.{b64(payload_json.encode())}.{b64(signature)}"


def resign(header_json: str, payload_json: str, key: Any = RSA_KEY) -> str:
    """Like forge, but with a valid RS256 signature over the exact texts."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{b64(header_json.encode())}.{b64(payload_json.encode())}"
    sig = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64(sig)}"


def request_authn(rule: str, *, name: str = "jwt", namespace: str = "istio-system") -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  jwtRules:
  - {rule}
"""


def inline_rule(*keys: dict[str, Any], extra: str = "") -> str:
    js = json.dumps(jwks_json(*keys) if keys else jwks_json(jwk(RSA_KEY, "k1")))
    return f'{{issuer: "{ISSUER}", audiences: ["{AUDIENCE}"], jwks: {js}{extra}}}'


def peer_authn(
    mode: str,
    *,
    name: str = "pa",
    namespace: str = "istio-system",
    selector: Mapping[str, str] | None = None,
    ports: Mapping[int, str] | None = None,
) -> str:
    sel = f"selector: {{matchLabels: {json.dumps(dict(selector))}}}\n  " if selector else ""
    port_level = ""
    if ports:
        port_level = (
            "\n  portLevelMtls: {" + ", ".join(f'"{p}": {{mode: {m}}}' for p, m in ports.items()) + "}"
        )
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  {sel}mtls: {{mode: {mode}}}{port_level}
"""


def bundles_of(*cas: Issued, td: str = "example.org") -> BundleSet:
    return BundleSet({td: TrustBundle.make(td, tuple(ca.cert for ca in cas))}, 1)


def resolver(
    policy_text: str = "",
    bundles: BundleSet | None = None,
    *,
    trusted: tuple[str, ...] = (),
    jwks: JwksRegistry | None = None,
    bind: bool = False,
) -> IdentityResolver:
    return IdentityResolver(
        load_text(policy_text),
        bundles or BundleSet(),
        TrustedProxies(trusted),
        jwks or JwksRegistry(),
        bind_token_to_peer=bind,
    )


def cert_field(issued: Issued) -> str:
    """The certificate as Envoy puts it in source.certificate: URL-encoded PEM."""
    return urllib.parse.quote(issued.cert_pem.decode(), safe="")


def view(**kwargs: Any) -> RequestView:
    return from_check_request(check_request(**kwargs))


def resolve(r: IdentityResolver, **kwargs: Any) -> Resolution:
    return r.resolve(view(**kwargs))


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class JwksServer:
    def __init__(self) -> None:
        self.body = jwks_json(jwk(RSA_KEY, "k1"))
        self.delay = 0.0
        self.redirect = ""
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.delay:
                    time.sleep(outer.delay)
                if outer.redirect:
                    self.send_response(302)
                    self.send_header("location", outer.redirect)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = outer.body.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/keys"

    def start(self) -> JwksServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class OidcServer:
    """An OpenID provider on loopback: ``{issuer}/.well-known/openid-configuration`` naming
    ``{issuer}/keys`` as its ``jwks_uri``. The issuer may have a path (``/realms/shop``).

    Knobs: ``discovery`` (the document's text; None: 404), ``discovery_delay`` (seconds before
    answering it), ``jwks`` (the key set's text). ``hits`` counts requests by path.
    """

    def __init__(self, issuer_path: str = "") -> None:
        self.issuer_path = issuer_path
        self.jwks = jwks_json(jwk(RSA_KEY, "k1"))
        self.discovery: str | None = None  # set in start(), once the port is known
        self.discovery_delay = 0.0
        self.hits: dict[str, int] = {}
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits[self.path] = outer.hits.get(self.path, 0) + 1
                if self.path == outer.issuer_path + "/.well-known/openid-configuration":
                    if outer.discovery_delay:
                        outer._stop.wait(outer.discovery_delay)
                    body = outer.discovery
                elif self.path == outer.issuer_path + "/keys":
                    body = outer.jwks
                else:
                    body = None
                if body is None:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=lambda: self.httpd.serve_forever(poll_interval=0.02), daemon=True
        )

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.issuer_path}"

    @property
    def discovery_hits(self) -> int:
        return self.hits.get(self.issuer_path + "/.well-known/openid-configuration", 0)

    @property
    def jwks_hits(self) -> int:
        return self.hits.get(self.issuer_path + "/keys", 0)

    def start(self) -> OidcServer:
        self.discovery = json.dumps({"issuer": self.issuer, "jwks_uri": self.issuer + "/keys"})
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # release a hanging discovery answer
        self.httpd.shutdown()
        self.httpd.server_close()
