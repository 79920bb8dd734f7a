"""Tracing as a decision sink: configuration from OTEL_*, one span per check with the parent
from the request's traceparent, and a queue that drops (and counts) instead of blocking."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from helpers import write_policies
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from extauthz import reasons
from extauthz.decision.cache import DecisionCache
from extauthz.decision.spans import SPAN_NAME, Tracing, start_tracing
from extauthz.decision.tracing import TracingConfig, TracingError, config_from_env
from extauthz.pipeline import CheckCore
from extauthz.policy.store import PolicyStore
from extauthz.tools.samples import check_request

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: items, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["/items"]}}]
"""


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("env", "exporter"),
    [
        ({}, None),
        ({"OTEL_SERVICE_NAME": "authz", "OTEL_TRACES_SAMPLER": "always_on"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, None),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "otlp"),
    ],
)
def test_tracing_is_off_unless_the_environment_asks(env: dict[str, str], exporter: str | None) -> None:
    config = config_from_env(env)
    assert (config.exporter if config is not None else None) == exporter


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_a_setting_extauthz_cannot_use_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(TracingError, match="not supported"):
        config_from_env(env)


# --------------------------------------------------------------------------- spans


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    s = PolicyStore(write_policies(tmp_path / "p", {"p.yaml": POLICY}))
    s.load()
    return s


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(TracingConfig("otlp"), exporter)
    yield tracing, exporter
    tracing.shutdown()


def _spans(tracing: Tracing, exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    tracing._provider.force_flush()
    return exporter.get_finished_spans()


def test_one_span_per_check_child_of_the_requests_traceparent(
    store: PolicyStore, traced: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = traced
    core = CheckCore(lambda: store.engine, cache=DecisionCache(100, 10.0), tracer=tracing)
    headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"}
    request = check_request(path="/items", headers=headers, request_id="req-1").SerializeToString()
    core.answer(request)
    core.answer(request)  # a cache hit
    core.answer(check_request(path="/admin", request_id="req-2").SerializeToString())  # no parent

    first, hit, denied = _spans(tracing, exporter)
    for span in (first, hit):
        assert span.name == SPAN_NAME and span.kind is SpanKind.SERVER
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None and span.parent.is_remote
        assert format(span.parent.span_id, "016x") == PARENT_ID
        assert span.context.trace_state.to_header() == "vendor=opaque"
        assert span.start_time is not None and span.end_time is not None
        assert 0 < span.start_time <= span.end_time
    first_attributes = dict(first.attributes or {})
    decision_id = first_attributes.pop("extauthz.decision_id")
    # The service's own id (never the client's x-request-id), one per decision, a hit included.
    assert isinstance(decision_id, str) and len(decision_id) == 32 and decision_id != "req-1"
    assert (hit.attributes or {})["extauthz.decision_id"] not in (decision_id, "req-1")
    assert first_attributes == {
        "rpc.system": "grpc",
        "rpc.service": "envoy.service.auth.v3.Authorization",
        "rpc.method": "Check",
        "extauthz.allowed": True,
        "extauthz.status": 200,
        "extauthz.reason": reasons.ALLOWED,
        "extauthz.policy": "istio-system/items",
        "extauthz.peer": "spiffe://example.org/ns/shop/sa/frontend",
        "extauthz.cache_hit": False,
    }
    assert (hit.attributes or {})["extauthz.cache_hit"] is True
    # No traceparent: a root span of its own trace.
    assert denied.parent is None and format(denied.context.trace_id, "032x") != TRACE_ID
    assert (denied.attributes or {})["extauthz.allowed"] is False
    assert (denied.attributes or {})["extauthz.status"] == 403
    assert "extauthz.policy" not in (denied.attributes or {})


def test_a_malformed_request_is_traced_too(
    store: PolicyStore, traced: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = traced
    CheckCore(lambda: store.engine, tracer=tracing).answer(b"\xff\xff not a CheckRequest")
    (span,) = _spans(tracing, exporter)
    assert (span.attributes or {})["extauthz.reason"] == reasons.MALFORMED
    assert span.parent is None


def test_without_a_tracer_the_core_makes_no_span(
    store: PolicyStore, traced: tuple[Tracing, InMemorySpanExporter]
) -> None:
    tracing, exporter = traced
    CheckCore(lambda: store.engine).answer(check_request(path="/items").SerializeToString())
    assert _spans(tracing, exporter) == ()


class _Stuck(SpanExporter):
    """A collector that does not answer until released, then refuses."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_collector_never_blocks_a_check_and_every_span_lost_is_counted(
    store: PolicyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    stuck = _Stuck()
    tracing = start_tracing(TracingConfig("otlp"), stuck)
    core = CheckCore(lambda: store.engine, tracer=tracing)
    request = check_request(path="/items").SerializeToString()
    try:
        core.answer(request)
        assert stuck.entered.wait(30)  # the exporter holds the first batch
        done = threading.Event()

        def many() -> None:
            for _ in range(50):
                core.answer(request)
            done.set()

        threading.Thread(target=many, daemon=True).start()
        # 50 checks finish while the collector holds the export: no check waits on it.
        assert done.wait(60)
        assert tracing.dropped >= 50 - 4  # at most the queue's 4 are still waiting
        assert tracing.exported == 0
    finally:
        stuck.release.set()
        tracing.shutdown()
    assert tracing.dropped == 51  # every span: refused by the collector or dropped at the queue
