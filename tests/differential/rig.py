"""One real Envoy for the differential test: a TLS listener (client certificates optional), one
route per policy (chosen by the ``x-diff-case`` header) whose RBAC per-route configuration is the
policy's translation, and a ``direct_response`` 200 behind it. And a small HTTP/1.1 client that
sends requests exactly as written (method case, ``_`` in names, whitespace) over keep-alive TLS.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events

from extauthz.devenv.ca import Issued, issue_server_cert, issue_svid, make_ca, write_pem_files
from extauthz.devenv.net import LOOPBACK, free_port, tail
from extauthz.devenv.processes import envoy_binary

CASE_HEADER = "x-diff-case"
RBAC_DENIED = b"RBAC: access denied"
ALLOW, DENY, REFUSED, LOST = "allow", "deny", "refused", "lost"
UNAUTHENTICATED = "unauthenticated"  # jwt_authn's 401: a token that failed verification


def jwt_authn(issuer: str, jwks: str) -> dict[str, Any]:
    """Envoy's jwt_authn filter as Istio configures it for one RequestAuthentication rule: the
    provider (local JWKS, token from ``Authorization: Bearer`` or ``access_token``), its verified
    payload in dynamic metadata (``payload``), and Istio's requirement: that provider or no token
    at all (``allow_missing``); a token that fails verification is a 401 before RBAC."""
    return {"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"issuer": {
            "issuer": issuer,
            "local_jwks": {"inline_string": jwks},
            "payload_in_metadata": "payload",
            "forward": True,
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "issuer"}, {"allow_missing": {}}]}}}],
    }}


def bootstrap(listen_port: int, admin_port: int, tls: Mapping[str, str],
              routes: list[dict[str, Any]], jwt: dict[str, Any] | None = None) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": "diff",
        "use_remote_address": True,  # remote_ip is the peer (no trusted x-forwarded-for)
        "delayed_close_timeout": "0s",  # a connection error closes at once (the bisection waits)
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            *([jwt] if jwt else []),
            {"name": "envoy.filters.http.rbac", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    transport = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".DownstreamTlsContext",
            "require_client_certificate": False,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": tls["cert"]},
                                      "private_key": {"filename": tls["key"]}}],
                "validation_context": {"trusted_ca": {"filename": tls["ca"]}},
                "alpn_protocols": ["h2"],
            },
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "diff",
            "address": {"socket_address": {"address": LOOPBACK, "port_value": listen_port}},
            # Istio's listeners have the TLS inspector: it sets the SNI RBAC's
            # requested_server_name reads
            "listener_filters": [{"name": "envoy.filters.listener.tls_inspector", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3"
                         ".TlsInspector"}}],
            "filter_chains": [{
                "transport_socket": transport,
                "filters": [{"name": "envoy.filters.network.http_connection_manager",
                             "typed_config": hcm}],
            }],
        }]},
    }


def route(case_id: str, rbac: dict[str, Any]) -> dict[str, Any]:
    return {
        "match": {"prefix": "/", "headers": [{"name": CASE_HEADER,
                                              "string_match": {"exact": case_id}}]},
        "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
        "typed_per_filter_config": {"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            "rbac": {"rules": rbac},
        }},
    }


@dataclass
class Pki:
    """A CA, Envoy's server certificate and one client SVID per SPIFFE ID, as PEM files."""

    directory: Path
    ca: Issued = field(init=False)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # spiffe id -> (chain, key)
    server: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        self.ca = make_ca("example.org")
        self.ca_file = str(self.directory / "ca.pem")
        Path(self.ca_file).write_bytes(self.ca.cert_pem)
        srv = write_pem_files(issue_server_cert(self.ca), self.directory, "server")
        self.server = (str(srv.chain), str(srv.key))

    def svid(self, spiffe_id: str) -> tuple[str, str]:
        if spiffe_id not in self.files:
            name = f"svid{len(self.files)}"
            pem = write_pem_files(issue_svid(self.ca, spiffe_id), self.directory, name)
            self.files[spiffe_id] = (str(pem.chain), str(pem.key))
        return self.files[spiffe_id]


class Envoy:
    def __init__(
        self, workdir: Path, pki: Pki, routes: list[dict[str, Any]], port: int | None = None,
        jwt: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.pki = pki
        self.port = port or free_port()
        self.admin_port = free_port()
        self.config = workdir / "envoy.json"
        tls = {"cert": pki.server[0], "key": pki.server[1], "ca": pki.ca_file}
        self.config.write_text(json.dumps(bootstrap(self.port, self.admin_port, tls, routes, jwt)))
        self.proc: subprocess.Popen[bytes] | None = None
        self._contexts: dict[str | None, ssl.SSLContext] = {}

    def start(self, timeout: float = 30.0) -> Envoy:
        binary = envoy_binary()
        assert binary is not None
        self.stderr = self.workdir / "envoy.stderr.log"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.config), "--use-dynamic-base-id", "--log-level", "warn",
                 "--concurrency", "1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        deadline = time.monotonic() + timeout
        while True:  # a condition with a generous bound, never a fixed sleep
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited {self.proc.returncode}:\n{tail(self.stderr)}")
            try:
                url = f"http://{LOOPBACK}:{self.admin_port}/ready"
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.read().strip() == b"LIVE":
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy not ready:\n{tail(self.stderr)}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def _context(self, who: str | None) -> ssl.SSLContext:
        if who not in self._contexts:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.pki.ca_file)
            ctx.check_hostname = False  # the SNI varies per case; the CA is still verified
            ctx.set_alpn_protocols(["h2"])
            if who is not None:
                ctx.load_cert_chain(*self.pki.svid(who))
            self._contexts[who] = ctx
        return self._contexts[who]

    def send_all(self, requests: Sequence[tuple[str | None, str, Request]]) -> list[str]:
        """The outcome of each (client SVID, SNI, request): ``allow`` (200), ``deny`` (RBAC's 403)
        or ``refused <status>`` (Envoy answered before RBAC, 0: the stream or connection died).

        HTTP/2 (h2 over TLS), one connection per (SVID, SNI), every request its own stream: the
        method, names and values go as written (over HTTP/1.1 Envoy's codec answers 400 to a
        lower-case method before RBAC sees it). A request that kills its connection (a control
        character in a value is a connection error) is found by bisection and answered alone.
        """
        out = [""] * len(requests)
        by_conn: dict[tuple[str | None, str], list[int]] = {}
        for i, (who, sni, _) in enumerate(requests):
            by_conn.setdefault((who, sni), []).append(i)

        def shape(i: int) -> tuple[tuple[str, str], ...]:
            """The request without its route header: Envoy's codec refuses before routing."""
            return tuple(h for h in requests[i][2] if h[0] != CASE_HEADER)

        for (who, sni), idx in by_conn.items():
            # An odd request (a control character, an upper-case name) may be a connection
            # error that takes every stream in flight with it: try one of each shape alone
            # first; a shape that kills its connection is refused for every route alike.
            odd: dict[tuple[tuple[str, str], ...], list[int]] = {}
            batch = []
            for i in idx:
                (odd.setdefault(shape(i), []) if _odd(requests[i][2]) else batch).append(i)
            for members in odd.values():
                probe = self._send(who, sni, [requests[members[0]][2]])[0]
                if probe == LOST:
                    for i in members:
                        out[i] = f"{REFUSED} 0"
                else:
                    batch.extend(members)
            todo = [batch]
            while todo:  # bisect if a batch still loses streams
                part = todo.pop()
                got = self._send(who, sni, [requests[i][2] for i in part])
                lost = [i for i, o in zip(part, got, strict=True) if o == LOST]
                for i, o in zip(part, got, strict=True):
                    out[i] = o
                if len(part) == 1 and lost:
                    out[part[0]] = f"{REFUSED} 0"
                elif lost:
                    todo += [lost[: len(lost) // 2], lost[len(lost) // 2 :]]
        return out

    def _send(self, who: str | None, sni: str, requests: list[Request]) -> list[str]:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=10)
        tls = self._context(who).wrap_socket(sock, server_hostname=sni)
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        ))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        streams: dict[int, int] = {}
        for i, req in enumerate(requests):
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, req, end_stream=True)
            streams[sid] = i
        tls.sendall(conn.data_to_send())
        status: dict[int, int] = {}
        body: dict[int, bytes] = {}
        done: set[int] = set()
        with tls:
            while len(done) < len(streams):
                data = tls.recv(65536)
                if not data:
                    break
                for ev in conn.receive_data(data):
                    sid = getattr(ev, "stream_id", None)
                    if isinstance(ev, h2.events.ResponseReceived):
                        status[sid] = int(dict(ev.headers)[":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        body[sid] = body.get(sid, b"") + ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                    elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                        done.add(sid)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        done.update(streams)
                tls.sendall(conn.data_to_send())
        out = [""] * len(requests)
        for sid, i in streams.items():
            code = status.get(sid, 0)
            if sid not in status and sid not in body:
                out[i] = LOST
            elif code == 200:
                out[i] = ALLOW
            elif code == 403 and RBAC_DENIED in body.get(sid, b""):
                out[i] = DENY
            elif code == 401:  # only jwt_authn answers 401 here
                out[i] = UNAUTHENTICATED
            else:
                out[i] = f"{REFUSED} {code}"
        return out


Request = list[tuple[str, str]]


def _odd(req: Request) -> bool:
    return any(
        k != k.lower() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in k + v)
        for k, v in req
        if not k.startswith(":")
    ) or not dict(req).get(":authority")


def h2_request(method: str, path: str, host: str, headers: Iterable[tuple[str, str]],
               case_id: str) -> Request:
    return [(":method", method), (":path", path), (":authority", host), (":scheme", "https"),
            (CASE_HEADER, case_id), *headers]
