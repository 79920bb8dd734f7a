"""The OpenTelemetry SDK side of tracing (tracing.py): a TracerProvider with a batch processor,
and the accounting of spans exported and dropped. Imported only when tracing is on."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from extauthz import reasons
from extauthz.decision.tracing import TracedDecision, TracingConfig

log = logging.getLogger("extauthz.decision.spans")

SPAN_NAME = "envoy.service.auth.v3.Authorization/Check"
_STATIC_ATTRIBUTES: dict[str, Any] = {
    "rpc.system": "grpc",
    "rpc.service": "envoy.service.auth.v3.Authorization",
    "rpc.method": "Check",
}


class Accounting(SpanExporter):
    """Wraps the real exporter and counts what reaches it: taken off the queue, exported,
    failed (a failed batch is dropped: the processor never retries it)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.taken = 0
        self.exported = 0
        self.failed = 0
        self._stopped = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        self.taken += n
        try:
            result = SpanExportResult.FAILURE if self._stopped else self.inner.export(spans)
        except Exception:
            log.exception("span export failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += n
        else:
            self.failed += n
        return result

    def stop(self) -> None:
        """Stop exporting: an export retrying against a collector that is down gives up."""
        if not self._stopped:
            self._stopped = True
            self.inner.shutdown()  # type: ignore[no-untyped-call]

    def shutdown(self) -> None:
        self.stop()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Gate(SpanProcessor):
    """In front of the BatchSpanProcessor: a span that would overflow its queue is dropped here
    and counted (the SDK's own queue would push out its oldest span, counted only by the SDK's
    opt-in internal metrics). ``on_end`` never blocks."""

    def __init__(self, inner: BatchSpanProcessor, accounting: Accounting, capacity: int) -> None:
        self.inner = inner
        self.accounting = accounting
        self.capacity = capacity
        self.offered = 0
        self.dropped = 0
        self._lock = threading.Lock()  # uncontended but for a moment: checks on many threads

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        with self._lock:
            # Spans in the queue: offered to the processor, not yet taken by the exporter.
            if self.offered - self.accounting.taken >= self.capacity:
                self.dropped += 1
                return
            self.offered += 1
        self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """Makes one span per check and exports it in the background; counts what it drops."""

    def __init__(self, provider: TracerProvider, gate: Gate) -> None:
        self._provider = provider
        self._gate = gate
        self._tracer = provider.get_tracer("extauthz")
        self._propagator = TraceContextTextMapPropagator()
        self._error = Status(StatusCode.ERROR, reasons.INTERNAL)

    @property
    def dropped(self) -> int:
        """Spans dropped: the queue was full, or their export failed."""
        return self._gate.dropped + self._gate.accounting.failed

    @property
    def exported(self) -> int:
        return self._gate.accounting.exported

    def record(
        self, decision: TracedDecision, headers: Mapping[str, str], start_ns: int, end_ns: int
    ) -> None:
        """One span for one decided check (times in epoch nanoseconds). Never raises."""
        try:
            parent = self._propagator.extract(headers) if "traceparent" in headers else None
            span = self._tracer.start_span(
                SPAN_NAME, context=parent, kind=SpanKind.SERVER, start_time=start_ns
            )
            if span.is_recording():  # sampled: only then are the attributes built
                attributes = dict(_STATIC_ATTRIBUTES)
                attributes["extauthz.decision_id"] = decision.decision_id
                attributes["extauthz.allowed"] = decision.allowed
                attributes["extauthz.status"] = decision.status
                attributes["extauthz.reason"] = decision.reason
                attributes["extauthz.cache_hit"] = decision.cache == "hit"
                if decision.policy is not None:
                    attributes["extauthz.policy"] = decision.policy
                peer = decision.identity.peer
                if peer is not None:
                    attributes["extauthz.peer"] = str(peer)
                span.set_attributes(attributes)
                if decision.reason == reasons.INTERNAL:
                    span.set_status(self._error)
            span.end(end_time=end_ns)
        except Exception:
            log.exception("cannot record the check's span")

    def shutdown(self, flush_seconds: float = 2.0) -> None:
        """Export what is queued (for at most ``flush_seconds``), then stop. Never hangs on a
        collector that is down: what is still queued then is dropped and counted."""
        flusher = threading.Thread(target=self._provider.force_flush, name="otel-flush", daemon=True)
        flusher.start()
        flusher.join(flush_seconds)
        self._gate.accounting.stop()
        self._provider.shutdown()
        log.info("tracing stopped: %d spans exported, %d dropped", self.exported, self.dropped)


def start_tracing(config: TracingConfig, exporter: SpanExporter | None = None) -> Tracing:
    """A TracerProvider with the batch processor and the configured exporter. The SDK reads the
    sampler, the resource and the OTEL_BSP_* / OTEL_EXPORTER_OTLP_* settings from the
    environment."""
    if exporter is None:
        exporter = ConsoleSpanExporter() if config.exporter == "console" else OTLPSpanExporter()
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "extauthz"}
    provider = TracerProvider(resource=Resource.create(attributes))
    accounting = Accounting(exporter)
    capacity = queue_capacity(os.environ)
    # The processor's queue is a little larger than the gate's: a span offered by the gate
    # always fits (the gate counts the drops; the SDK's queue would silently push one out).
    processor = BatchSpanProcessor(
        accounting, max_queue_size=capacity + 1, max_export_batch_size=batch_size(os.environ, capacity)
    )
    gate = Gate(processor, accounting, capacity)
    provider.add_span_processor(gate)
    log.info("tracing on: %s exporter, spans named %s", config.exporter, SPAN_NAME)
    return Tracing(provider, gate)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def queue_capacity(env: Mapping[str, str]) -> int:
    """``OTEL_BSP_MAX_QUEUE_SIZE`` (the SDK's default, 2048, when unset or not a positive integer)."""
    return _positive(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)


def batch_size(env: Mapping[str, str], capacity: int) -> int:
    """``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (default 512), never more than the queue holds."""
    return min(_positive(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), capacity)
