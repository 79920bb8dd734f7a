"""Both transports as real servers: gRPC clients, message limits, deadlines, drain on SIGTERM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from helpers import FRONTEND_ID, ExtauthzProcess, write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.tools.samples import check_request

TRANSPORTS = ["grpcio", "h2corn"]
POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/api/*"]}}]
"""
CHECK = "/envoy.service.auth.v3.Authorization/Check"


@pytest.fixture(params=TRANSPORTS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> ExtauthzProcess:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    proc = ExtauthzProcess(policies, tmp_path / "x", extra_args=["--transport", request.param])
    request.addfinalizer(proc.stop)
    return proc.start()


def _call(target: str, data: bytes, timeout: float = 5.0) -> ext.CheckResponse:
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        return ext.CheckResponse.FromString(ch.unary_unary(CHECK)(data, timeout=timeout))


def test_allow_and_deny(server: ExtauthzProcess) -> None:
    assert (
        _call(
            server.grpc_target, check_request(path="/api/x", principal=FRONTEND_ID).SerializeToString()
        ).status.code
        == 0
    )
    resp = _call(server.grpc_target, check_request(path="/admin").SerializeToString())
    assert resp.status.code != 0 and resp.denied_response.status.code == 403


def test_oversized_message_never_allows(server: ExtauthzProcess) -> None:
    msg = check_request(path="/api/x", headers={"x-big": "a" * (5 << 20)}).SerializeToString()
    try:
        resp = _call(server.grpc_target, msg)
    except grpc.RpcError as exc:  # grpcio: RESOURCE_EXHAUSTED -> Envoy's status_on_error (403)
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    else:  # h2corn: a deny CheckResponse
        assert resp.status.code != 0 and resp.denied_response.status.code == 403


def test_sigterm_drains_and_exits_zero(server: ExtauthzProcess) -> None:
    """Under load, SIGTERM ends with exit 0; every answered check is a whole answer and has its
    audit record; afterwards nothing is answered."""
    data = check_request(path="/api/x").SerializeToString()
    answered = []
    errors: list[grpc.StatusCode] = []
    stop = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(server.grpc_target) as ch:
            call = ch.unary_unary(CHECK)
            while not stop.is_set():
                try:
                    answered.append(ext.CheckResponse.FromString(call(data, timeout=2)).status.code)
                except grpc.RpcError as exc:
                    errors.append(exc.code())
                    time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    code = server.stop(timeout=15)
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 0, server.stderr_text()
    assert answered and set(answered) == {0}
    # Calls that arrive after SIGTERM are refused: UNAVAILABLE (h2corn's GOAWAY, connection gone)
    # or CANCELLED (grpcio refuses new calls during its grace period); Envoy denies both.
    refused = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert set(errors) <= refused, errors
    records = server.audit_records()
    assert len(records) >= len(answered)
    assert len(server.audit_log.read_text().splitlines()) == len(records)  # no partial line


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_address_in_use_exits_2_with_a_message(tmp_path: Path, transport: str) -> None:
    import socket
    import subprocess
    import sys

    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "extauthz",
                "serve",
                "--transport",
                transport,
                "--policies",
                str(policies),
                "--listen",
                f"127.0.0.1:{port}",
                "--audit-log",
                str(tmp_path / "a.log"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr.splitlines()[-1]


def test_health_check_and_watch_until_drain(server: ExtauthzProcess) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    with grpc.insecure_channel(server.grpc_target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "envoy.service.auth.v3.Authorization"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status == serving
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=2)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stream = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
        assert next(stream).status == serving
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.extend(r.status for r in _until_end(stream)))
        reader.start()
        time.sleep(0.3)
        assert server.stop(timeout=15) == 0
        reader.join(20)
    assert not reader.is_alive()
    assert not_serving in seen, seen  # told NOT_SERVING before the stream ended


def _until_end(stream: object) -> list[object]:
    out = []
    try:
        for item in stream:  # type: ignore[attr-defined]
            out.append(item)
    except grpc.RpcError:
        pass
    return out
