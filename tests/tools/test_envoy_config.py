"""The generated Envoy configuration: typed, fail-closed, and accepted by the real binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import DevPki, envoy_binary, validate_config

from extauthz.tools import envoy_config
from extauthz.tools.envoy_config import DownstreamTls, authz_cluster, bootstrap, ext_authz_filter

needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed")


def _any_fields(node: Any) -> list[dict[str, Any]]:
    """Every dict under a ``typed_config`` / ``typed_*`` key (they must carry ``@type``)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "typed_config" and isinstance(value, dict):
                found.append(value)
            if key in ("typed_per_filter_config", "typed_extension_protocol_options"):
                found.extend(v for v in value.values() if isinstance(v, dict))
            found.extend(_any_fields(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_any_fields(item))
    return found


def test_ext_authz_filter_fails_closed() -> None:
    f = ext_authz_filter("extauthz", 0.25)
    assert f["name"] == "envoy.filters.http.ext_authz"
    tc = f["typed_config"]
    assert tc["@type"] == "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
    assert tc["transport_api_version"] == "V3"
    assert tc["failure_mode_allow"] is False
    assert tc["include_peer_certificate"] is True
    assert tc["status_on_error"] == {"code": "Forbidden"}
    grpc = tc["grpc_service"]
    assert grpc["envoy_grpc"] == {"cluster_name": "extauthz"}
    assert grpc["timeout"] == "0.250s"
    assert grpc["retry_policy"]["retry_on"] == "connect-failure,refused-stream,reset,unavailable,cancelled"


def test_authz_cluster_http2_and_endpoints() -> None:
    c = authz_cluster(["127.0.0.1:9000", "unix:/run/extauthz.sock"])
    assert c["type"] == "STATIC"
    opts = c["typed_extension_protocol_options"][envoy_config.HTTP_PROTOCOL_OPTIONS_KEY]
    assert opts["@type"].endswith("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
    assert "http2_protocol_options" in opts["explicit_http_config"]
    addrs = [e["endpoint"]["address"] for e in c["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    assert addrs == [
        {"socket_address": {"address": "127.0.0.1", "port_value": 9000}},
        {"pipe": {"path": "/run/extauthz.sock"}},
    ]
    dns = authz_cluster(["extauthz.svc:9000"], health_check=True)
    assert dns["type"] == "STRICT_DNS"
    assert "grpc_health_check" in dns["health_checks"][0]
    with pytest.raises(ValueError):
        authz_cluster(["nonsense"])
    with pytest.raises(ValueError):
        authz_cluster(["host.name:1", "unix:/x"])


def _tls(pki: DevPki) -> DownstreamTls:
    return pki.envoy_tls()


def test_bootstrap_shape(pki: DevPki) -> None:
    cfg = bootstrap(
        listen_port=10443,
        admin_port=10901,
        upstream="127.0.0.1:8080",
        authz_endpoints=["127.0.0.1:9000"],
        tls=_tls(pki),
        context_extensions={"namespace": "shop"},
    )
    assert cfg["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 10901}
    listener = cfg["static_resources"]["listeners"][0]
    chain = listener["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    assert hcm["normalize_path"] is True
    assert hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    assert hcm["http_filters"][0]["typed_config"]["failure_mode_allow"] is False
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    assert route["route"]["cluster"] == "upstream"
    per_route = route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["check_settings"]["context_extensions"] == {"namespace": "shop"}
    tls = chain["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == str(pki.ca_file)
    anys = _any_fields(cfg)
    assert len(anys) >= 7
    assert all(a.get("@type", "").startswith("type.googleapis.com/") for a in anys)
    # The YAML round-trips.
    assert yaml.safe_load(envoy_config.render_yaml(cfg)) == cfg


def test_snippet() -> None:
    snip = envoy_config.snippet(["127.0.0.1:9000"])
    assert snip["http_connection_manager"]["merge_slashes"] is True
    assert snip["http_connection_manager"]["http_filters"][0]["name"].endswith("ext_authz")
    assert snip["clusters"][0]["name"] == "extauthz"
    assert yaml.safe_load(envoy_config.render_yaml(snip)) == snip


@needs_envoy
@pytest.mark.parametrize(
    ("tls", "endpoints", "upstream", "health"),
    [
        (True, ["127.0.0.1:9000"], "127.0.0.1:8080", True),
        (False, ["unix:/tmp/extauthz-test.sock"], "localhost:8080", False),
        (True, ["localhost:9000", "127.0.0.1:9001"], "127.0.0.1:8080", False),
    ],
)
def test_bootstrap_validates_with_envoy(
    tmp_path: Path,
    pki: DevPki,
    tls: bool,
    endpoints: list[str],
    upstream: str,
    health: bool,
) -> None:
    cfg = bootstrap(
        listen_port=10443,
        admin_port=10901,
        upstream=upstream,
        authz_endpoints=endpoints,
        tls=_tls(pki) if tls else None,
        context_extensions={"namespace": "shop"} if tls else None,
        authz_health_check=health,
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config.render_yaml(cfg), encoding="utf-8")
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


@needs_envoy
def test_envoy_rejects_a_broken_config(tmp_path: Path) -> None:
    """The validation really checks something (guards against a no-op validate)."""
    cfg = bootstrap(
        listen_port=10443,
        admin_port=10901,
        upstream="127.0.0.1:8080",
        authz_endpoints=["127.0.0.1:9000"],
    )
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"][0]["typed_config"]["failure_mode_allowed"] = False  # typo'd field
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config.render_yaml(cfg), encoding="utf-8")
    assert validate_config(path).returncode != 0
