"""``extauthz envoy-config``: what the CLI prints is what Envoy accepts.

``--bootstrap`` output goes straight to ``envoy --mode validate``; the default output (the
snippet a user pastes in) is embedded into a minimal bootstrap the way the docs tell users to,
and validated too.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import envoy_binary, validate_config

from extauthz.cli import main
from extauthz.tools import envoy_config

needs_envoy = pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed")

K8S_ENDPOINT = "extauthz-headless.extauthz.svc.cluster.local:9191"


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["envoy-config", *args])
    return code, out.getvalue(), err.getvalue()


def cli_yaml(*args: str) -> dict[str, Any]:
    code, out, err = run_cli(*args)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert isinstance(cfg, dict)
    return cfg


def embed_snippet(snip: dict[str, Any], *, upstream_port: int = 8080) -> dict[str, Any]:
    """A minimal bootstrap around the snippet, following docs/operations.md step by step."""
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}],
                }
            ],
        },
    }
    hcm.update(snip["http_connection_manager"])
    if "route_typed_per_filter_config" in snip:
        route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
        route["typed_per_filter_config"] = snip["route_typed_per_filter_config"]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "0.0.0.0", "port_value": 10000}},
                    "filter_chains": [
                        {"filters": [{"name": envoy_config.HCM_FILTER_NAME, "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": [
                *snip["clusters"],
                envoy_config.upstream_cluster(f"127.0.0.1:{upstream_port}", "app"),
            ],
        },
    }


def _validate(tmp_path: Path, cfg: dict[str, Any] | str) -> None:
    path = tmp_path / "envoy.yaml"
    text = cfg if isinstance(cfg, str) else envoy_config.render_yaml(cfg)
    path.write_text(text, encoding="utf-8")
    result = validate_config(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def _filter(cfg: dict[str, Any]) -> dict[str, Any]:
    hcm = cfg["http_connection_manager"]
    first = hcm["http_filters"][0]
    assert first["name"] == "envoy.filters.http.ext_authz"
    assert hcm["http_filters"][-1]["name"] == "envoy.filters.http.router"
    return dict(first["typed_config"])


def test_snippet_defaults_fail_closed_and_keep_paths_canonical() -> None:
    cfg = cli_yaml()
    tc = _filter(cfg)
    assert tc["failure_mode_allow"] is False
    assert tc["include_peer_certificate"] is True
    assert tc["transport_api_version"] == "V3"
    assert tc["status_on_error"] == {"code": "Forbidden"}
    assert tc["grpc_service"]["timeout"] == "0.250s"
    retry = tc["grpc_service"]["retry_policy"]
    # Only failures where no replica can have answered are retried, on another replica.
    assert set(retry["retry_on"].split(",")) == {
        "connect-failure", "refused-stream", "reset", "unavailable", "cancelled"
    }
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    hcm = cfg["http_connection_manager"]
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    (cluster,) = cfg["clusters"]
    assert cluster["name"] == tc["grpc_service"]["envoy_grpc"]["cluster_name"]
    assert "http2_protocol_options" in str(cluster["typed_extension_protocol_options"])
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": envoy_config.AUTHZ_HEALTH_SERVICE}
    assert check["no_traffic_interval"] == check["interval"] == "2s"
    assert "route_typed_per_filter_config" not in cfg


def test_snippet_options() -> None:
    cfg = cli_yaml(
        "--endpoint", K8S_ENDPOINT, "--timeout", "0.5", "--status-on-error", "503",
        "--context-extension", "namespace=shop", "--context-extension", "app=api",
        "--no-health-check",
    )
    tc = _filter(cfg)
    assert tc["status_on_error"] == {"code": "ServiceUnavailable"}
    assert tc["grpc_service"]["timeout"] == "0.500s"
    (cluster,) = cfg["clusters"]
    assert cluster["type"] == "STRICT_DNS"
    assert "health_checks" not in cluster
    per_route = cfg["route_typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["@type"].endswith("ext_authz.v3.ExtAuthzPerRoute")
    assert per_route["check_settings"]["context_extensions"] == {"namespace": "shop", "app": "api"}


@pytest.mark.parametrize(
    "args",
    [
        ("--status-on-error", "200x"),
        ("--status-on-error", "99"),
        ("--status-on-error", "1000"),
        ("--timeout", "0"),
        ("--endpoint", "no-port"),
        ("--context-extension", "novalue"),
    ],
)
def test_bad_options_are_usage_errors(args: tuple[str, ...]) -> None:
    with contextlib.suppress(SystemExit):  # argparse rejects "200x" itself
        code, out, err = run_cli(*args)
        assert code == 2 and out == "" and err


@needs_envoy
@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--endpoint", K8S_ENDPOINT, "--context-extension", "namespace=shop"),
        ("--endpoint", "unix:/run/extauthz/extauthz.sock", "--no-health-check"),
        ("--endpoint", "10.0.0.1:9191", "--endpoint", "10.0.0.2:9191", "--status-on-error", "503"),
    ],
)
def test_snippet_embedded_into_a_bootstrap_validates(tmp_path: Path, args: tuple[str, ...]) -> None:
    _validate(tmp_path, embed_snippet(cli_yaml(*args)))


@needs_envoy
@pytest.mark.parametrize(
    "args",
    [
        (),
        ("--endpoint", K8S_ENDPOINT, "--listen-address", "0.0.0.0", "--upstream", "app.shop.svc:8080"),
        ("--context-extension", "namespace=shop", "--timeout", "1", "--no-health-check"),
    ],
)
def test_cli_bootstrap_validates(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, out, err = run_cli("--bootstrap", *args)
    assert code == 0, err
    cfg = yaml.safe_load(out)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["http_filters"][0]["typed_config"]["failure_mode_allow"] is False
    _validate(tmp_path, out)  # exactly what the CLI printed


@needs_envoy
def test_validation_catches_a_broken_snippet(tmp_path: Path) -> None:
    """Guards the test above against a validate that accepts anything."""
    cfg = embed_snippet(cli_yaml())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["path_with_escaped_slashes_action"] = "REJECT_REQUESTS"
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config.render_yaml(cfg), encoding="utf-8")
    assert validate_config(path).returncode != 0
