"""The h2corn transport's gRPC wire handling, driven through its ASGI interface (no server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2
from helpers import write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog
from extauthz.envoy.grpc import (
    CHECK_PATH,
    DEADLINE_EXCEEDED,
    NOT_FOUND,
    UNIMPLEMENTED,
    frame,
    parse_grpc_timeout,
    unframe,
)
from extauthz.policy.store import PolicyStore
from extauthz.serving.h2corn import HEALTH_CHECK_PATH, GrpcApp
from extauthz.serving.service import Service
from extauthz.settings import Settings
from extauthz.tools.samples import check_request

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
"""


class Call:
    """What the app sent back for one request."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        start = events[0]
        self.status = start["status"]
        self.headers = dict(start.get("headers", []))
        self.body = b"".join(e.get("body", b"") for e in events if e["type"] == "http.response.body")
        trailers = [e for e in events if e["type"] == "http.response.trailers"]
        self.trailers = dict(trailers[0]["headers"]) if trailers else {}

    @property
    def grpc_status(self) -> int:
        return int(self.trailers[b"grpc-status"])

    def message(self) -> bytes:
        msg, problem = unframe(self.body)
        assert problem is None, problem
        assert msg is not None
        return msg

    def check_response(self) -> ext.CheckResponse:
        return ext.CheckResponse.FromString(self.message())


@pytest.fixture
def app(tmp_path: Path) -> GrpcApp:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    store = PolicyStore(policies)
    store.load()
    audit = AuditLog.open(str(tmp_path / "audit.log"))
    service = Service(Settings(policies=str(policies), max_message_bytes=64 * 1024), store, audit)
    application = GrpcApp(service)
    application.audit_path = tmp_path / "audit.log"  # type: ignore[attr-defined]
    return application


def call(
    app: GrpcApp,
    body: bytes,
    *,
    path: str = CHECK_PATH,
    headers: list[tuple[bytes, bytes]] | None = None,
    method: str = "POST",
    chunk: int = 0,
) -> Call:
    hdrs = headers if headers is not None else [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
    scope = {"type": "http", "method": method, "path": path, "headers": hdrs, "http_version": "2"}
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] if chunk else [body]
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    asyncio.run(app(scope, receive, send))
    return Call(sent)


def audit_lines(app: GrpcApp) -> list[dict[str, Any]]:
    app.service.audit.close()
    path: Path = app.audit_path  # type: ignore[attr-defined]
    return [json.loads(line) for line in path.read_text().splitlines()]


def req(path: str = "/api/items") -> bytes:
    return bytes(check_request(path=path).SerializeToString())


# --------------------------------------------------------------------------- framing helpers


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"250m", 0.25), (b"1S", 1.0), (b"2M", 120.0), (b"1H", 3600.0), (b"5u", 5e-6), (b"7n", 7e-9)],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_grpc_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"m", b"123456789m", b"10x", b"-1S", b"1.5S", b" 1S"])
def test_malformed_grpc_timeout_is_ignored(value: bytes) -> None:
    assert parse_grpc_timeout(value) is None


def test_unframe_rejects_every_bad_frame() -> None:
    assert unframe(frame(b"abc")) == (b"abc", None)
    assert unframe(frame(b"")) == (b"", None)
    assert unframe(b"\x00\x00\x00")[1] == "truncated gRPC frame"
    assert unframe(frame(b"abc")[:-1])[1] == "truncated gRPC frame"
    assert unframe(frame(b"abc") + b"x")[1] == "more than one gRPC message"
    assert "compressed" in (unframe(b"\x01" + frame(b"abc")[1:])[1] or "")
    assert unframe(b"\x02" + frame(b"abc")[1:])[1] == "invalid gRPC frame flag"
    assert "larger than 2" in (unframe(frame(b"abc"), limit=2)[1] or "")


# --------------------------------------------------------------------------- Check


def test_allow_and_deny_with_trailers(app: GrpcApp) -> None:
    ok = call(app, frame(req("/api/items")))
    assert ok.status == 200 and ok.headers[b"content-type"] == b"application/grpc"
    assert ok.grpc_status == 0
    assert ok.check_response().status.code == 0
    no = call(app, frame(req("/admin")))
    assert no.grpc_status == 0  # a deny is an answer, not a gRPC error
    resp = no.check_response()
    assert resp.status.code != 0 and resp.denied_response.status.code == 403


def test_body_in_many_chunks(app: GrpcApp) -> None:
    c = call(app, frame(req()), chunk=7)
    assert c.check_response().status.code == 0


@pytest.mark.parametrize(
    "body",
    [
        b"\x01" + frame(req())[1:],  # compressed flag
        frame(req())[:-3],  # truncated
        frame(req()) + frame(req()),  # two messages in a unary call
        b"\x00\x00",  # not even a prefix
        frame(b"\xff\xff\xff"),  # not a CheckRequest
    ],
    ids=["compressed", "truncated", "two-messages", "short", "garbage"],
)
def test_bad_frames_are_denied_not_errors(app: GrpcApp, body: bytes) -> None:
    c = call(app, body)
    assert c.grpc_status == 0
    resp = c.check_response()
    assert resp.status.code != 0
    assert resp.denied_response.status.code == 403
    [record] = audit_lines(app)
    assert record["allowed"] is False and record["reason"] == "malformed_check_request"


def test_oversized_message_is_denied_without_reading_it_all(app: GrpcApp) -> None:
    big = frame(b"\x00" * (200 * 1024))
    c = call(app, big, chunk=16 * 1024)
    resp = c.check_response()
    assert resp.status.code != 0 and resp.denied_response.status.code == 403
    [record] = audit_lines(app)
    assert "larger than" in record["error"]


def test_a_check_decided_after_its_deadline_is_answered_and_audited_as_a_deny(app: GrpcApp) -> None:
    """The policy allows it, but Envoy gave up on the answer (and answered 403 itself): the
    record and the metrics must say deny, never ``allowed: true``."""
    headers = [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"1n")]
    c = call(app, frame(req()), headers=headers)
    resp = c.check_response()
    assert resp.status.code != 0 and resp.denied_response.status.code == 403
    assert json.loads(resp.denied_response.body)["reason"] == "deadline_exceeded"
    [record] = audit_lines(app)
    assert (record["allowed"], record["status"], record["reason"]) == (False, 403, "deadline_exceeded")
    assert "allowed" in record["error"]  # what it would have been, had it been in time
    get = app.service.metrics.registry.get_sample_value
    assert get("extauthz_checks_total", {"outcome": "deny", "reason": "deadline_exceeded"}) == 1.0
    assert get("extauthz_checks_total", {"outcome": "allow", "reason": "allowed"}) is None


def test_a_late_health_check_answers_deadline_exceeded(app: GrpcApp) -> None:
    headers = [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"1n")]
    body = frame(health_pb2.HealthCheckRequest(service="").SerializeToString())
    c = call(app, body, path=HEALTH_CHECK_PATH, headers=headers)
    assert c.grpc_status == DEADLINE_EXCEEDED
    assert c.body == b""


def test_generous_deadline_answers(app: GrpcApp) -> None:
    headers = [(b"content-type", b"application/grpc"), (b"grpc-timeout", b"5S")]
    assert call(app, frame(req()), headers=headers).check_response().status.code == 0


def test_unknown_method_is_unimplemented(app: GrpcApp) -> None:
    c = call(app, frame(req()), path="/envoy.service.auth.v3.Authorization/Other")
    assert c.grpc_status == UNIMPLEMENTED


@pytest.mark.parametrize(
    ("method", "ctype"), [("POST", b"application/json"), ("GET", b"application/grpc"), ("POST", b"")]
)
def test_non_grpc_requests_get_415(app: GrpcApp, method: str, ctype: bytes) -> None:
    c = call(app, frame(req()), method=method, headers=[(b"content-type", ctype)])
    assert c.status == 415
    assert audit_lines(app) == []


def test_worker_index_in_audit_record(app: GrpcApp) -> None:
    app.service.core.worker = 3
    call(app, frame(req()))
    call(app, b"\x01\x00\x00\x00\x00")
    assert [r["worker"] for r in audit_lines(app)] == [3, 3]


# --------------------------------------------------------------------------- health


def health(app: GrpcApp, service: str = "") -> tuple[int, int | None]:
    c = call(
        app, frame(health_pb2.HealthCheckRequest(service=service).SerializeToString()), path=HEALTH_CHECK_PATH
    )
    if c.grpc_status != 0:
        return c.grpc_status, None
    return 0, health_pb2.HealthCheckResponse.FromString(c.message()).status


def test_health_serving_then_not_serving_while_draining(app: GrpcApp) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert health(app) == (0, serving)
    assert health(app, "envoy.service.auth.v3.Authorization") == (0, serving)
    assert health(app, "nope") == (NOT_FOUND, None)
    app.service.start_draining()
    assert health(app) == (0, health_pb2.HealthCheckResponse.NOT_SERVING)


def test_lifespan_is_acknowledged(app: GrpcApp) -> None:
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return events.pop(0)

    async def send(e: dict[str, Any]) -> None:
        sent.append(e)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [e["type"] for e in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_body_over_the_connection_budget_is_denied_and_counted(tmp_path: Path) -> None:
    """ASGI level: a body that arrives in pieces beyond the per-connection budget is a deny with
    reason resource_limit, counted in extauthz_bad_requests_total{kind="resource_limit"}."""
    from prometheus_client import generate_latest

    from extauthz.metrics import Metrics

    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    store = PolicyStore(policies)
    store.load()
    settings = Settings(
        policies=str(policies),
        max_message_bytes=16 * 1024,
        max_buffered_bytes_per_connection=16 * 1024 + 5,
        max_buffered_bytes=64 * 1024,
    )
    service = Service(settings, store, AuditLog.open(str(tmp_path / "audit.log")))
    metrics = Metrics()
    service.core.metrics = metrics
    application = GrpcApp(service)
    held = application.limits.budget
    held.take(("127.0.0.1", 5555), 16 * 1024)  # another stream of this connection holds 16 KiB
    body = frame(req())
    scope = {"type": "http", "method": "POST", "path": CHECK_PATH, "http_version": "2",
             "headers": [(b"content-type", b"application/grpc")], "client": ("127.0.0.1", 5555)}
    incoming = [{"type": "http.request", "body": body[:10], "more_body": True},
                {"type": "http.request", "body": body[10:], "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    asyncio.run(application(scope, receive, send))
    resp = Call(sent).check_response()
    assert resp.denied_response.status.code == 403
    assert held.total == 16 * 1024  # the refused stream released what it held
    text = generate_latest(metrics.registry).decode()
    assert 'extauthz_bad_requests_total{kind="resource_limit"} 1.0' in text
    service.audit.close()
    [record] = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert record["reason"] == "resource_limit"
