"""Envoy v3 messages for a whole proxy: the http_connection_manager with the ext_authz filter,
downstream TLS, and a complete static bootstrap (``extauthz envoy-config --bootstrap``, the
demo and the tests' Envoy). The single pieces are in envoy_messages.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy_data_plane.envoy.config.bootstrap.v3 import Admin, Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    Node,
    SocketAddress,
    TransportSocket,
)
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
)
from envoy_data_plane.google.protobuf import Any as AnyMsg

from extauthz.tools.envoy_messages import (
    HCM_FILTER_NAME,
    PATH_SETTINGS,
    TLS_TRANSPORT_SOCKET,
    DownstreamTls,
    authz_cluster_message,
    cluster_message,
    ext_authz_filter_message,
    per_route_ext_authz,
    router_filter_message,
)


def http_connection_manager_message(
    *,
    upstream_cluster: str,
    authz_cluster_name: str = "extauthz",
    timeout_s: float = 0.25,
    context_extensions: Mapping[str, str] | None = None,
    stat_prefix: str = "ingress_http",
    status_on_error: int = 403,
    grpc_client: str = "envoy_grpc",
    authz_endpoints: Sequence[str] | None = None,
    authz: bool = True,
) -> HttpConnectionManager:
    """HCM with path normalisation, ext_authz then router, and one route ``/``."""
    route = Route(
        match=RouteMatch(prefix="/"),
        route=RouteAction(cluster=upstream_cluster),
        typed_per_filter_config=(per_route_ext_authz(context_extensions) if context_extensions else {}),
    )
    return HttpConnectionManager(
        stat_prefix=stat_prefix,
        **PATH_SETTINGS,
        use_remote_address=True,
        route_config=RouteConfiguration(
            name="local_route",
            virtual_hosts=[VirtualHost(name="all", domains=["*"], routes=[route])],
        ),
        http_filters=[
            *(
                [
                    ext_authz_filter_message(
                        authz_cluster_name,
                        timeout_s,
                        status_on_error,
                        grpc_client=grpc_client,
                        endpoints=authz_endpoints,
                    )
                ]
                if authz
                else []
            ),
            router_filter_message(),
        ],
    )


def downstream_tls_socket(tls: DownstreamTls) -> TransportSocket:
    context = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificates=[
                TlsCertificate(
                    certificate_chain=DataSource(filename=str(tls.cert_chain)),
                    private_key=DataSource(filename=str(tls.private_key)),
                )
            ],
            validation_context=CertificateValidationContext(
                trusted_ca=DataSource(filename=str(tls.trusted_ca))
            ),
        ),
        require_client_certificate=tls.require_client_certificate,
    )
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=AnyMsg.pack(context))


def bootstrap_message(
    *,
    listen_port: int,
    admin_port: int,
    upstream: str,
    authz_endpoints: Sequence[str],
    listen_address: str = "127.0.0.1",
    tls: DownstreamTls | None = None,
    context_extensions: Mapping[str, str] | None = None,
    timeout_s: float = 0.25,
    authz_health_check: bool = False,
    authz_cluster_name: str = "extauthz",
    upstream_cluster_name: str = "upstream",
    node_id: str = "extauthz-dev",
    status_on_error: int = 403,
    grpc_client: str = "envoy_grpc",
    authz: bool = True,
) -> Bootstrap:
    """The typed Bootstrap (see :func:`bootstrap`)."""
    hcm = http_connection_manager_message(
        upstream_cluster=upstream_cluster_name,
        authz_cluster_name=authz_cluster_name,
        timeout_s=timeout_s,
        context_extensions=context_extensions,
        status_on_error=status_on_error,
        grpc_client=grpc_client,
        authz_endpoints=authz_endpoints,
        authz=authz,
    )
    chain = FilterChain(
        filters=[Filter(name=HCM_FILTER_NAME, typed_config=AnyMsg.pack(hcm))],
        transport_socket=downstream_tls_socket(tls) if tls is not None else None,
    )
    listener = Listener(
        name="ingress",
        address=Address(socket_address=SocketAddress(address=listen_address, port_value=listen_port)),
        filter_chains=[chain],
    )
    return Bootstrap(
        node=Node(id=node_id, cluster="extauthz"),
        admin=Admin(
            address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=admin_port))
        ),
        static_resources=BootstrapStaticResources(
            listeners=[listener],
            clusters=[
                authz_cluster_message(authz_endpoints, authz_cluster_name, health_check=authz_health_check),
                cluster_message(upstream_cluster_name, [upstream], http2=False, connect_timeout_s=1.0),
            ],
        ),
    )
