"""HTTPS requests through Envoy with a client SVID (stdlib only)."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from extauthz.devenv.ca import PemFiles
from extauthz.devenv.net import LOOPBACK


class HttpResult(NamedTuple):
    status: int
    headers: dict[str, str]
    """Lower-case names; repeated headers joined by ``,``."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def client_context(
    ca_file: Path | str,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """Verify the server against ``ca_file``; present ``cert_file``/``key_file`` if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return ctx


def https_request(
    port: int,
    method: str,
    path: str,
    *,
    ca_file: Path | str,
    client: PemFiles | None = None,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | None = None,
    host: str = LOOPBACK,
    timeout: float = 10.0,
) -> HttpResult:
    """One HTTPS/1.1 request to ``host:port`` presenting ``client`` (its chain and key).

    The server certificate is verified against ``ca_file`` for ``host`` (Envoy's test
    certificate has the SANs ``localhost`` and ``127.0.0.1``).  ``path`` is sent verbatim.
    Raises ``ssl.SSLError``/``OSError`` if the handshake fails (e.g. Envoy rejects the
    client certificate).
    """
    ctx = client_context(
        ca_file,
        client.chain if client is not None else None,
        client.key if client is not None else None,
    )
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = list(headers.items() if isinstance(headers, Mapping) else headers)
        if not any(name.lower() == "host" for name, _ in items):
            conn.putheader("Host", host)
        for name, value in items:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        joined: dict[str, str] = {}
        for k, v in resp.getheaders():
            key = k.lower()
            joined[key] = f"{joined[key]},{v}" if key in joined else v
        return HttpResult(resp.status, joined, data)
    finally:
        conn.close()
