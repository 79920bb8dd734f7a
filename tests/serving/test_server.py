"""``extauthz serve`` as a process: gRPC answers, health, reload, drain."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import ExtauthzProcess, write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc
from extauthz.tools.samples import check_request

ALLOW_ITEMS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["/items"]}}]
"""
ALLOW_ORDERS = ALLOW_ITEMS.replace("/items", "/orders")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ExtauthzProcess, Path]]:
    policy_dir = tmp_path / "policies"
    write_policies(policy_dir, {"p.yaml": ALLOW_ITEMS})
    proc = ExtauthzProcess(policy_dir, tmp_path / "run").start()
    yield proc, policy_dir
    proc.stop()


def _check(target: str, path: str) -> ext.CheckResponse:
    with grpc.insecure_channel(target) as ch:
        resp: ext.CheckResponse = ext_grpc.AuthorizationStub(ch).Check(
            check_request(path=path), timeout=5
        )
        return resp


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_health_serving_for_both_names(served: tuple[ExtauthzProcess, Path]) -> None:
    proc, _ = served
    with grpc.insecure_channel(proc.grpc_target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "envoy.service.auth.v3.Authorization"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_garbage_bytes_get_a_deny_response_not_a_grpc_error(
    served: tuple[ExtauthzProcess, Path],
) -> None:
    proc, _ = served
    with grpc.insecure_channel(proc.grpc_target) as ch:
        call = ch.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        raw = call(b"\xff\xfe\xfd garbage", timeout=5)
    resp = ext.CheckResponse.FromString(raw)
    assert resp.status.code == 7
    assert resp.denied_response.status.code == 403


def test_edit_reloads_and_bad_edit_keeps_last_good(served: tuple[ExtauthzProcess, Path]) -> None:
    proc, policy_dir = served
    target = proc.grpc_target
    assert _check(target, "/items").status.code == 0
    assert _check(target, "/orders").status.code != 0
    # a good edit takes effect without a restart
    (policy_dir / "p.yaml").write_text(ALLOW_ORDERS)
    assert _wait_for(lambda: _check(target, "/orders").status.code == 0)
    assert _check(target, "/items").status.code != 0
    # a broken edit is refused: the last good set keeps serving
    (policy_dir / "p.yaml").write_text(ALLOW_ITEMS.replace("paths", "pathz"))
    assert _wait_for(lambda: "pathz" in proc.stderr_text())
    assert _check(target, "/orders").status.code == 0
    assert _check(target, "/items").status.code != 0
    # and the next good edit recovers
    (policy_dir / "p.yaml").write_text(ALLOW_ITEMS)
    assert _wait_for(lambda: _check(target, "/items").status.code == 0)


def test_sighup_reloads(served: tuple[ExtauthzProcess, Path]) -> None:
    proc, policy_dir = served
    (policy_dir / "extra.yaml").write_text(ALLOW_ORDERS.replace("name: p", "name: q"))
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    assert _wait_for(lambda: _check(proc.grpc_target, "/orders").status.code == 0)


def test_sigterm_drains_and_exits_zero_with_every_audit_record(
    served: tuple[ExtauthzProcess, Path],
) -> None:
    proc, _ = served
    for i in range(20):
        _check(proc.grpc_target, "/items" if i % 2 else "/nope")
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    records = proc.audit_records()
    assert len(records) == 20
    assert sum(r["allowed"] for r in records) == 10
