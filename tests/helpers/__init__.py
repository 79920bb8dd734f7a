"""Reusable end-to-end test harness: dev PKI, echo upstream, extauthz and Envoy processes.

Typical use (see ``tests/conftest.py`` for the fixtures)::

    authz = ExtauthzProcess(policy_dir, workdir).start()
    envoy = EnvoyProcess(workdir, upstream=echo.address, authz_endpoints=[authz.endpoint],
                         tls=pki.envoy_tls()).start()
    status, headers, body = https_request(envoy.listen_port, "GET", "/api/items",
                                          ca_file=pki.ca_file, client=pki.files["frontend"])
"""

from extauthz.devenv.client import HttpResult, client_context, https_request
from extauthz.devenv.echo import EchoRequest, EchoServer, echo_document
from extauthz.devenv.net import LOOPBACK, REPO_ROOT, free_port, tail, tcp_open, wait_until
from extauthz.devenv.pki import (
    API_ID,
    ENVOY_ID,
    FRONTEND_ID,
    INTRUDER_ID,
    TRUST_DOMAIN,
    WORKLOADS,
    DevPki,
    build_pki,
)
from extauthz.devenv.processes import (
    EnvoyProcess,
    ExtauthzProcess,
    envoy_binary,
    grpc_serving,
    validate_config,
)

from .policies import write_policies

__all__ = [
    "API_ID",
    "ENVOY_ID",
    "FRONTEND_ID",
    "INTRUDER_ID",
    "LOOPBACK",
    "REPO_ROOT",
    "TRUST_DOMAIN",
    "WORKLOADS",
    "DevPki",
    "EchoRequest",
    "EchoServer",
    "EnvoyProcess",
    "ExtauthzProcess",
    "HttpResult",
    "build_pki",
    "client_context",
    "echo_document",
    "envoy_binary",
    "free_port",
    "grpc_serving",
    "https_request",
    "tail",
    "tcp_open",
    "validate_config",
    "wait_until",
    "write_policies",
]
