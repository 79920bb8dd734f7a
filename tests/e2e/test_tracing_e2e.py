"""Tracing end to end: client -> real Envoy -> extauthz (OTEL_* in its environment) -> an OTLP/gRPC
receiver on loopback (a grpcio TraceService built from opentelemetry-proto's classes).

The client sends a W3C ``traceparent``; Envoy passes it to extauthz in the CheckRequest's
headers; the span extauthz exports must be its child, with the decision's attributes."""

from __future__ import annotations

import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from helpers import (
    FRONTEND_ID,
    INTRUDER_ID,
    LOOPBACK,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    envoy_binary,
    free_port,
    https_request,
    write_policies,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc
from extauthz.tools.samples import check_request

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
"""

# A short batch delay keeps the test fast; the bound of every wait stays generous.
OTEL_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    "OTEL_SERVICE_NAME": "extauthz-e2e",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    "OTEL_BSP_SCHEDULE_DELAY": "50",
}


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps (service.name, span) of every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Span]] = []
        self._lock = threading.Lock()

    def Export(  # the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for rs in request.resource_spans:
                service = _attrs(rs.resource.attributes).get("service.name", "")
                for ss in rs.scope_spans:
                    self.spans.extend((str(service), span) for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, trace_id: str, timeout: float = 20.0) -> tuple[str, Span]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for service, span in self.spans:
                    if span.trace_id.hex() == trace_id:
                        return service, span
            time.sleep(0.05)
        raise AssertionError(f"no span of trace {trace_id} in {len(self.spans)} spans received")


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value") or "string_value")


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    rec = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    yield rec, port
    server.stop(0)


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def test_each_check_is_a_span_child_of_the_clients_traceparent(
    tmp_path: Path, pki: DevPki, echo_server: EchoServer, receiver: tuple[Receiver, int]
) -> None:
    rec, port = receiver
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    env = {**OTEL_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{port}"}
    authz = ExtauthzProcess(
        policies, tmp_path / "authz", env=env, extra_args=["--trust-bundle", f"example.org={pki.ca_file}"]
    ).start()
    try:
        with EnvoyProcess(
            tmp_path / "envoy", upstream=echo_server.address, authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(), timeout_s=2.0,
        ).start() as envoy:

            def get(who: str, path: str, traceparent: str) -> int:
                return https_request(
                    envoy.listen_port, "GET", path, ca_file=pki.ca_file, client=pki.files[who],
                    headers=[("traceparent", traceparent), ("tracestate", "client=1")],
                ).status

            allowed_trace, allowed_parent, tp1 = _traceparent()
            denied_trace, denied_parent, tp2 = _traceparent()
            assert get("frontend", "/api/items", tp1) == 200
            assert get("intruder", "/api/items", tp2) == 403

            records = {r["decision_id"]: r for r in authz.wait_audit(2)}
            service, allowed = rec.wait_for(allowed_trace)
            _, denied = rec.wait_for(denied_trace)
    finally:
        authz.stop()

    assert service == "extauthz-e2e"
    for span, parent in ((allowed, allowed_parent), (denied, denied_parent)):
        assert span.parent_span_id.hex() == parent, "the span is not the child of the traceparent"
        assert span.name == "envoy.service.auth.v3.Authorization/Check"
        assert span.kind == Span.SPAN_KIND_SERVER
        assert span.trace_state == "client=1"
        assert span.start_time_unix_nano <= span.end_time_unix_nano
    a, d = _attrs(allowed.attributes), _attrs(denied.attributes)
    assert a["extauthz.decision_id"] in records and d["extauthz.decision_id"] in records
    assert a["extauthz.decision_id"] != d["extauthz.decision_id"]
    assert {k: v for k, v in a.items() if k.startswith("extauthz.") and k != "extauthz.decision_id"} == {
        "extauthz.allowed": True,
        "extauthz.status": 200,
        "extauthz.reason": "allowed",
        "extauthz.policy": "shop/frontend-to-api",
        "extauthz.peer": FRONTEND_ID,
        "extauthz.cache_hit": False,
    }
    assert d["extauthz.allowed"] is False and d["extauthz.status"] == 403
    assert d["extauthz.reason"] == records[d["extauthz.decision_id"]]["reason"]
    assert d["extauthz.peer"] == INTRUDER_ID


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5).read().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


def test_collector_down_checks_are_answered_and_dropped_spans_counted(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    metrics_port = free_port()
    env = {
        **OTEL_ENV,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{free_port()}",  # nobody listens
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
        "OTEL_BSP_MAX_QUEUE_SIZE": "8",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4",
    }
    checks = 40
    with ExtauthzProcess(
        policies, tmp_path / "authz", env=env, extra_args=["--metrics", f"{LOOPBACK}:{metrics_port}"]
    ).start() as authz, grpc.insecure_channel(authz.grpc_target) as channel:
        stub = ext_grpc.AuthorizationStub(channel)
        for i in range(checks):
            path = "/api/items" if i % 2 == 0 else "/admin"
            resp = stub.Check(check_request(path=path), timeout=10)
            assert resp.status.code == (0 if i % 2 == 0 else 7), i  # OK / PERMISSION_DENIED
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = _scrape(metrics_port)
            if metrics["extauthz_trace_spans_dropped_total"] >= checks:
                break
            time.sleep(0.1)
        assert metrics["extauthz_trace_spans_dropped_total"] == checks
        assert metrics["extauthz_trace_spans_exported_total"] == 0
        assert authz.stop() == 0  # a collector that is down does not hold up the shutdown
