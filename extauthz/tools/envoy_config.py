"""Envoy v3 configuration for fronting services with the extauthz service.

Built with the typed classes of ``envoy-data-plane`` (betterproto2), converted to
proto3-JSON-shaped dicts with snake_case keys (what Envoy's YAML loader accepts)
and dumped as YAML.  betterproto2 renders ``google.protobuf.Any`` fields as
``{"@type": URL, ...fields}`` and omits proto3 default values; the security-relevant
defaults (``failure_mode_allow: false``) are written out explicitly afterwards so a
reader of the YAML sees them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)

from extauthz.tools.envoy_bootstrap import bootstrap_message
from extauthz.tools.envoy_messages import (
    AUTHZ_HEALTH_SERVICE,
    EXT_AUTHZ_FILTER_NAME,
    GRPC_CLIENTS,
    HCM_FILTER_NAME,
    HTTP_PROTOCOL_OPTIONS_KEY,
    PATH_SETTINGS,
    Config,
    DownstreamTls,
    authz_cluster_message,
    cluster_message,
    explicit_defaults,
    ext_authz_filter_message,
    google_grpc_target,
    parse_endpoint,
    per_route_ext_authz,
    router_filter_message,
    status_code,
    to_dict,
)

__all__ = [
    "AUTHZ_HEALTH_SERVICE",
    "EXT_AUTHZ_FILTER_NAME",
    "GRPC_CLIENTS",
    "HCM_FILTER_NAME",
    "HTTP_PROTOCOL_OPTIONS_KEY",
    "DownstreamTls",
    "authz_cluster",
    "bootstrap",
    "ext_authz_filter",
    "google_grpc_target",
    "hcm_path_settings",
    "parse_endpoint",
    "render_yaml",
    "snippet",
    "status_code",
    "upstream_cluster",
]

# --------------------------------------------------------------------------- public dict API


def ext_authz_filter(
    cluster: str = "extauthz",
    timeout_s: float = 0.25,
    status_on_error: int = 403,
    *,
    grpc_client: str = "envoy_grpc",
    endpoints: Sequence[str] | None = None,
) -> Config:
    """The ``envoy.filters.http.ext_authz`` http filter as a dict.

    gRPC (V3) to ``cluster`` with a ``timeout_s`` deadline, fail closed
    (``failure_mode_allow: false``; an error or timeout answers ``status_on_error``, 403 by
    default), peer certificate included.
    """
    msg = ext_authz_filter_message(
        cluster, timeout_s, status_on_error, grpc_client=grpc_client, endpoints=endpoints
    )
    out: Config = explicit_defaults(to_dict(msg))
    return out


def authz_cluster(
    endpoints: list[str],
    name: str = "extauthz",
    *,
    health_check: bool = False,
    connect_timeout_s: float = 1.0,
) -> Config:
    """The extauthz cluster as a dict: HTTP/2, STATIC (IPs, unix sockets) or STRICT_DNS."""
    return to_dict(
        authz_cluster_message(endpoints, name, health_check=health_check, connect_timeout_s=connect_timeout_s)
    )


def upstream_cluster(endpoint: str, name: str = "upstream") -> Config:
    """A plain HTTP/1.1 cluster with one endpoint."""
    return to_dict(cluster_message(name, [endpoint], http2=False, connect_timeout_s=1.0))


def hcm_path_settings() -> Config:
    """The http_connection_manager path settings the policies rely on."""
    return to_dict(HttpConnectionManager(**PATH_SETTINGS))


def bootstrap(
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
) -> Config:
    """A complete static Envoy bootstrap as a dict.

    Admin on 127.0.0.1:``admin_port``; one listener on ``listen_address:listen_port``
    (downstream mTLS when ``tls`` is given) whose HCM normalises paths, runs ext_authz
    against ``authz_endpoints`` then routes everything to ``upstream`` (``HOST:PORT``,
    HTTP/1.1).  ``context_extensions`` are sent with every check of the route.
    """
    msg = bootstrap_message(
        listen_port=listen_port,
        admin_port=admin_port,
        upstream=upstream,
        authz_endpoints=authz_endpoints,
        listen_address=listen_address,
        tls=tls,
        context_extensions=context_extensions,
        timeout_s=timeout_s,
        authz_health_check=authz_health_check,
        authz_cluster_name=authz_cluster_name,
        upstream_cluster_name=upstream_cluster_name,
        node_id=node_id,
        status_on_error=status_on_error,
        grpc_client=grpc_client,
        authz=authz,
    )
    out: Config = explicit_defaults(to_dict(msg))
    return out


def snippet(
    endpoints: Sequence[str],
    *,
    cluster: str = "extauthz",
    timeout_s: float = 0.25,
    health_check: bool = True,
    status_on_error: int = 403,
    context_extensions: Mapping[str, str] | None = None,
    grpc_client: str = "envoy_grpc",
) -> Config:
    """What to paste into an existing Envoy config (for ``extauthz envoy-config``).

    ``http_connection_manager``: settings to merge into the HCM, with ``http_filters``
    listing ext_authz before the router; ``clusters``: the extauthz cluster. With
    ``context_extensions``, also ``route_typed_per_filter_config``: the value of a route's (or
    virtual host's) ``typed_per_filter_config`` that sends them with every check.
    """
    out: Config = {
        "http_connection_manager": {
            **hcm_path_settings(),
            "http_filters": [
                ext_authz_filter(
                    cluster, timeout_s, status_on_error, grpc_client=grpc_client, endpoints=endpoints
                ),
                to_dict(router_filter_message()),
            ],
        },
        # With google_grpc Envoy dials the filter's target_uri itself; the cluster stays for
        # health checking and as the envoy_grpc alternative.
        "clusters": [authz_cluster(list(endpoints), cluster, health_check=health_check)],
    }
    if context_extensions:
        per_route = per_route_ext_authz(context_extensions)
        out["route_typed_per_filter_config"] = {k: to_dict(v) for k, v in per_route.items()}
    return out


def render_yaml(cfg: Mapping[str, Any]) -> str:
    """Dump a config dict as YAML (key order kept)."""
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=False)
