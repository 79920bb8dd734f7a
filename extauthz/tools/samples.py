"""Build CheckRequests the way Envoy sends them: for tests, benchmarks and examples."""

from __future__ import annotations

from collections.abc import Mapping

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext


def check_request(
    *,
    principal: str = "spiffe://example.org/ns/shop/sa/frontend",
    method: str = "GET",
    path: str = "/api/items",
    host: str = "api.shop.svc",
    headers: Mapping[str, str] | None = None,
    source_address: str = "10.0.0.5",
    source_port: int = 41234,
    destination_principal: str = "spiffe://example.org/ns/shop/sa/api",
    destination_address: str = "10.0.0.9",
    destination_port: int = 8443,
    certificate: str = "",
    context_extensions: Mapping[str, str] | None = None,
    request_id: str = "",
    sni: str = "",
    protocol: str = "HTTP/2",
) -> ext.CheckRequest:
    msg = ext.CheckRequest()
    a = msg.attributes
    a.source.principal = principal
    a.source.certificate = certificate
    a.source.address.socket_address.address = source_address
    a.source.address.socket_address.port_value = source_port
    a.destination.principal = destination_principal
    a.destination.address.socket_address.address = destination_address
    a.destination.address.socket_address.port_value = destination_port
    http = a.request.http
    http.method = method
    http.path = path
    http.host = host
    http.scheme = "https"
    http.protocol = protocol
    http.id = request_id
    all_headers = {":method": method, ":path": path, ":authority": host}
    if request_id:
        all_headers["x-request-id"] = request_id
    all_headers.update(headers or {})
    for k, v in all_headers.items():
        http.headers[k] = v
    for k, v in (context_extensions or {}).items():
        a.context_extensions[k] = v
    if sni:
        a.tls_session.sni = sni
    return msg
