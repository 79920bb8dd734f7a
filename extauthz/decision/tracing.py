"""OpenTelemetry tracing: one span per check, a decision sink like the audit log.

Configured by the standard environment variables and off when none is set:

- ``OTEL_TRACES_EXPORTER``: ``otlp`` (OTLP over gRPC), ``console`` (JSON lines on standard
  output, for debugging) or ``none``. Unset, tracing is on when an OTLP endpoint is set
  (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``: ``otlp`` is the
  standard default exporter) and off otherwise. ``OTEL_SDK_DISABLED=true`` turns it off.
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL``): ``grpc`` (the default); any
  other protocol is refused at startup.
- ``OTEL_SERVICE_NAME`` (default ``extauthz``), ``OTEL_TRACES_SAMPLER`` and
  ``OTEL_TRACES_SAMPLER_ARG`` (default ``parentbased_always_on``), ``OTEL_BSP_*`` (the batch
  processor), ``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, timeout, TLS) are read by the SDK.

The span is made after the decision, with explicit start and end times: the check does no
OpenTelemetry work before it is decided, and none at all when tracing is off (CheckCore holds
no ``Tracing`` then). It is the child of the W3C ``traceparent`` (and ``tracestate``) Envoy
passed in the CheckRequest's headers. Spans go to a bounded queue that a background thread
exports in batches: a check never waits on the collector. When the queue is full or an export
fails (the collector is down), spans are dropped and counted (``dropped``, exported as
``extauthz_trace_spans_dropped_total``).

This module reads the configuration and names what a span is made of; ``spans.py`` holds the
OpenTelemetry SDK part, imported only when tracing is on (the SDK costs ~90 ms to import).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

EXPORTERS = ("otlp", "console", "none")


class TracingError(ValueError):
    """A tracing setting that cannot be used (refused at startup)."""


class _Identity(Protocol):
    @property
    def peer(self) -> object | None: ...


class TracedDecision(Protocol):
    """What a span reads of a decision (pipeline.Decision has it)."""

    @property
    def decision_id(self) -> str: ...
    @property
    def allowed(self) -> bool: ...
    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def cache(self) -> str: ...
    @property
    def identity(self) -> _Identity: ...


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: str  # "otlp" or "console"


def config_from_env(env: Mapping[str, str]) -> TracingConfig | None:
    """The tracing configuration the environment asks for; None when tracing is off.

    Raises TracingError for an exporter or protocol this service cannot use."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not exporter:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            return None
        exporter = "otlp"
    if exporter not in EXPORTERS:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={exporter!r} is not supported (use one of {', '.join(EXPORTERS)})"
        )
    if exporter == "none":
        return None
    if exporter == "otlp":
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        ).strip().lower()
        if protocol != "grpc":
            raise TracingError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported (extauthz exports OTLP "
                "over gRPC: use grpc)"
            )
    return TracingConfig(exporter)


class Tracer(Protocol):
    """What CheckCore calls at the end of a check (spans.Tracing is one)."""

    def record(
        self, decision: TracedDecision, headers: Mapping[str, str], start_ns: int, end_ns: int
    ) -> None: ...
