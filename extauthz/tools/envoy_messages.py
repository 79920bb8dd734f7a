"""Envoy v3 configuration messages for fronting services with extauthz, built with the typed
classes of ``envoy-data-plane`` (betterproto2). ``envoy_config.py`` turns them into the dicts and
YAML that users paste in; ``to_dict`` and ``explicit_defaults`` are the conversion rules (see
there).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto2
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    ApiVersion,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    GrpcServiceGoogleGrpc,
    GrpcServiceGoogleGrpcChannelArgs,
    GrpcServiceGoogleGrpcChannelArgsValue,
    HealthCheck,
    HealthCheckGrpcHealthCheck,
    Http1ProtocolOptions,
    Http2ProtocolOptions,
    Pipe,
    RetryPolicy,
    RetryPolicyRetryHostPredicate,
    SocketAddress,
)
from envoy_data_plane.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 import (
    CheckSettings,
    ExtAuthz,
    ExtAuthzPerRoute,
)
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManagerPathWithEscapedSlashesAction,
    HttpFilter,
)
from envoy_data_plane.envoy.extensions.retry.host.previous_hosts.v3 import PreviousHostsPredicate
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import HttpStatus, StatusCode
from envoy_data_plane.google.protobuf import Any as AnyMsg

EXT_AUTHZ_FILTER_NAME = "envoy.filters.http.ext_authz"
ROUTER_FILTER_NAME = "envoy.filters.http.router"
HCM_FILTER_NAME = "envoy.filters.network.http_connection_manager"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
HTTP_PROTOCOL_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
EXT_AUTHZ_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
# The gRPC health service name Envoy's active health check asks for: SERVING once a policy set
# is loaded, NOT_SERVING from the moment the service starts draining.
AUTHZ_HEALTH_SERVICE = "envoy.service.auth.v3.Authorization"

Config = dict[str, Any]


@dataclass(frozen=True)
class DownstreamTls:
    """Files for the listener's TLS: server chain/key, and the CA that client certs must chain to."""

    cert_chain: Path | str
    private_key: Path | str
    trusted_ca: Path | str
    require_client_certificate: bool = True


# --------------------------------------------------------------------------- helpers


def to_dict(msg: betterproto2.Message) -> Config:
    out: Config = msg.to_dict(casing=betterproto2.Casing.SNAKE)
    return out


def _seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def explicit_defaults(node: Any) -> Any:
    """Write out proto3 defaults that matter for security (omitted by proto JSON)."""
    if isinstance(node, dict):
        for value in node.values():
            explicit_defaults(value)
        if node.get("@type") == EXT_AUTHZ_TYPE_URL:
            node.setdefault("failure_mode_allow", False)
    elif isinstance(node, list):
        for item in node:
            explicit_defaults(item)
    return node


def parse_endpoint(endpoint: str) -> tuple[Address, bool]:
    """Parse ``HOST:PORT``, ``[V6]:PORT``, ``unix:/path`` or ``unix:///path``.

    Returns the Envoy address and whether it needs DNS resolution (a host name).
    """
    if endpoint.startswith("unix:"):
        path = endpoint[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"empty unix socket path in {endpoint!r}")
        return Address(pipe=Pipe(path=path)), False
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT or unix:/path")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {endpoint!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        needs_dns = False
    except ValueError:
        needs_dns = True
    return Address(socket_address=SocketAddress(address=host, port_value=port)), needs_dns


def cluster_message(
    name: str,
    endpoints: Sequence[str],
    *,
    http2: bool,
    connect_timeout_s: float,
    health_checks: list[HealthCheck] | None = None,
) -> Cluster:
    if not endpoints:
        raise ValueError(f"cluster {name!r} needs at least one endpoint")
    parsed = [parse_endpoint(e) for e in endpoints]
    needs_dns = any(dns for _, dns in parsed)
    if needs_dns and any(addr.pipe is not None for addr, _ in parsed):
        raise ValueError("cannot mix unix sockets and host names in one cluster")
    protocol = (
        HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
        if http2
        else HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
    )
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STRICT_DNS if needs_dns else ClusterDiscoveryType.STATIC,
        connect_timeout=_seconds(connect_timeout_s),
        typed_extension_protocol_options={
            HTTP_PROTOCOL_OPTIONS_KEY: AnyMsg.pack(HttpProtocolOptions(explicit_http_config=protocol))
        },
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=addr)) for addr, _ in parsed]
                )
            ],
        ),
        health_checks=health_checks or [],
    )


# --------------------------------------------------------------------------- typed builders


def status_code(code: int) -> StatusCode:
    """An HTTP status Envoy can send (``status_on_error``); ValueError for anything else."""
    if code not in StatusCode._value2member_map_ or code < 200:
        raise ValueError(f"{code} is not an HTTP status code Envoy can send")
    return StatusCode(code)


def _check_retry_policy() -> RetryPolicy:
    """Retry a check that never reached a replica (one draining or gone) on another one.

    Only failures where no decision came back: no connection, a refused or reset stream, or
    UNAVAILABLE / CANCELLED (what a stopping grpcio or h2corn server answers a call it will not
    finish). A check is idempotent; a deny is never retried.
    """
    return RetryPolicy(
        retry_on="connect-failure,refused-stream,reset,unavailable,cancelled",
        num_retries=2,
        retry_host_predicate=[
            RetryPolicyRetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=AnyMsg.pack(PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )


GRPC_CLIENTS = ("envoy_grpc", "google_grpc")


def google_grpc_target(endpoints: Sequence[str]) -> str:
    """A gRPC target URI for Envoy's ``google_grpc`` client: ``ipv4:A:P,B:Q`` (or ``ipv6:``)
    for IP endpoints, ``unix:/PATH`` or ``dns:///HOST:PORT`` for a single other endpoint."""
    if not endpoints:
        raise ValueError("google_grpc needs at least one endpoint")
    parsed = [parse_endpoint(e) for e in endpoints]
    if all(addr.socket_address is not None and not dns for addr, dns in parsed):
        family = {ipaddress.ip_address(a.socket_address.address).version for a, _ in parsed}  # type: ignore[union-attr]
        if len(family) == 1:
            scheme = "ipv4" if family == {4} else "ipv6"
            fmt = "{}:{}" if scheme == "ipv4" else "[{}]:{}"
            return scheme + ":" + ",".join(
                fmt.format(a.socket_address.address, a.socket_address.port_value)  # type: ignore[union-attr]
                for a, _ in parsed
            )
    if len(endpoints) != 1:
        raise ValueError("google_grpc lists several endpoints only as IP addresses of one family")
    addr, _ = parsed[0]
    if addr.pipe is not None:
        return f"unix:{addr.pipe.path}"
    return f"dns:///{endpoints[0]}"


def _grpc_service(
    cluster: str, timeout_s: float, grpc_client: str, endpoints: Sequence[str] | None
) -> GrpcService:
    if grpc_client == "envoy_grpc":
        return GrpcService(
            envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=cluster),
            timeout=_seconds(timeout_s),
            retry_policy=_check_retry_policy(),
        )
    if grpc_client != "google_grpc":
        raise ValueError(f"grpc_client must be one of {GRPC_CLIENTS}")
    google = GrpcServiceGoogleGrpc(
        target_uri=google_grpc_target(endpoints or ["127.0.0.1:9191"]),
        stat_prefix=cluster,
        # Spread the calls over every listed worker (gRPC's default, pick_first, uses one).
        channel_args=GrpcServiceGoogleGrpcChannelArgs(
            args={"grpc.lb_policy_name": GrpcServiceGoogleGrpcChannelArgsValue(string_value="round_robin")}
        ),
    )
    return GrpcService(google_grpc=google, timeout=_seconds(timeout_s), retry_policy=_check_retry_policy())


def ext_authz_filter_message(
    cluster: str = "extauthz",
    timeout_s: float = 0.25,
    status_on_error: int = 403,
    *,
    grpc_client: str = "envoy_grpc",
    endpoints: Sequence[str] | None = None,
) -> HttpFilter:
    """The typed ``envoy.filters.http.ext_authz`` HttpFilter (see :func:`ext_authz_filter`).

    ``grpc_client="google_grpc"`` makes Envoy call ``endpoints`` with the gRPC C++ library
    instead of its own client and the cluster (measured in bench/README.md)."""
    if timeout_s <= 0:
        raise ValueError("the ext_authz timeout must be positive")
    config = ExtAuthz(
        transport_api_version=ApiVersion.V3,
        grpc_service=_grpc_service(cluster, timeout_s, grpc_client, endpoints),
        failure_mode_allow=False,
        include_peer_certificate=True,
        status_on_error=HttpStatus(code=status_code(status_on_error)),
        stat_prefix="extauthz",
    )
    return HttpFilter(name=EXT_AUTHZ_FILTER_NAME, typed_config=AnyMsg.pack(config))


def router_filter_message() -> HttpFilter:
    return HttpFilter(name=ROUTER_FILTER_NAME, typed_config=AnyMsg.pack(Router()))


def authz_cluster_message(
    endpoints: Sequence[str],
    name: str = "extauthz",
    *,
    health_check: bool = False,
    connect_timeout_s: float = 1.0,
) -> Cluster:
    """The typed HTTP/2 cluster for the extauthz service (see :func:`authz_cluster`)."""
    checks = (
        [
            HealthCheck(
                timeout=_seconds(1.0),
                interval=_seconds(2.0),
                # Envoy's default for a cluster that has had no traffic yet is 60 s between
                # checks: a replica that went away would keep being chosen for a minute.
                no_traffic_interval=_seconds(2.0),
                unhealthy_threshold=1,
                healthy_threshold=1,
                grpc_health_check=HealthCheckGrpcHealthCheck(service_name=AUTHZ_HEALTH_SERVICE),
            )
        ]
        if health_check
        else None
    )
    return cluster_message(
        name, endpoints, http2=True, connect_timeout_s=connect_timeout_s, health_checks=checks
    )


def per_route_ext_authz(context_extensions: Mapping[str, str]) -> dict[str, AnyMsg]:
    per_route = ExtAuthzPerRoute(check_settings=CheckSettings(context_extensions=dict(context_extensions)))
    return {EXT_AUTHZ_FILTER_NAME: AnyMsg.pack(per_route)}


# The HCM settings that make every path Envoy sends canonical (what policies compare against).
PATH_SETTINGS: dict[str, Any] = {
    "normalize_path": True,
    "merge_slashes": True,
    "path_with_escaped_slashes_action": HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST,
}
