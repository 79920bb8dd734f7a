"""Resource bounds on the Check port (issue 13, "Starving the service"), against ``extauthz serve``.

A raw HTTP/2 client opens streams whose bodies never end (``extauthz.devenv.h2raw``). The
mechanism is asserted (the stream is answered with a deny or reset; the message cap refuses
before the body is all sent), never timing figures: those are in ``bench/run.py slow-streams``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ExtauthzProcess, write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.devenv.h2raw import RawH2, StreamState
from extauthz.tools.samples import check_request

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: istio-system}
spec:
  rules:
  - to: [{operation: {paths: ["/items"]}}]
"""
CAP = 16 * 1024
BOUNDS = f"""
max_message_bytes: {CAP}
body_timeout: 1.0
max_streams_per_connection: 8
max_buffered_bytes_per_connection: {4 * CAP}
max_buffered_bytes: {64 * CAP}
"""
GENEROUS = 30.0  # every wait below ends as soon as its condition holds


def serve(tmp_path: Path, *extra: str, config: str = BOUNDS) -> ExtauthzProcess:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    cfg = tmp_path / "bounds.yaml"
    cfg.write_text(config)
    return ExtauthzProcess(policies, tmp_path / "run", extra_args=["--config", str(cfg), *extra]).start()


@pytest.fixture
def h2corn_server(tmp_path: Path) -> Iterator[ExtauthzProcess]:
    proc = serve(tmp_path)
    yield proc
    proc.stop()


def client(proc: ExtauthzProcess) -> RawH2:
    return RawH2("127.0.0.1", proc.port)


def denied(state: StreamState) -> bool:
    msg = state.message()
    if not state.ended or state.grpc_status != 0 or msg is None:
        return False
    return bool(ext.CheckResponse.FromString(msg).denied_response.status.code == 403)


def allowed_check(c: RawH2) -> bool:
    state = c.call(check_request(path="/items").SerializeToString(), timeout=GENEROUS)
    msg = state.message()
    return state.grpc_status == 0 and msg is not None and ext.CheckResponse.FromString(msg).status.code == 0


def unfinished(c: RawH2, nbytes: int, declared: int | None = None) -> int:
    """A stream whose gRPC frame announces ``declared`` bytes (default: one more than sent) and
    carries ``nbytes`` of them, without END_STREAM."""
    sid = c.open()
    length = declared if declared is not None else nbytes + 1
    c.send(sid, b"\x00" + length.to_bytes(4, "big") + bytes(nbytes), timeout=GENEROUS)
    return sid


def reasons_in(proc: ExtauthzProcess, count: int) -> list[str]:
    return [r["reason"] for r in proc.wait_audit(count, timeout=GENEROUS)]


def test_server_announces_the_stream_bound(h2corn_server: ExtauthzProcess) -> None:
    with client(h2corn_server) as c:
        assert c.max_streams == 8


def test_body_that_never_completes_is_denied_after_the_timeout(h2corn_server: ExtauthzProcess) -> None:
    with client(h2corn_server) as c:
        sid = unfinished(c, 100)
        assert c.wait(lambda: c.streams[sid].finished, GENEROUS)
        assert denied(c.streams[sid])
        assert allowed_check(c)  # the connection still serves
    assert reasons_in(h2corn_server, 2)[0] == "resource_limit"
    record = h2corn_server.audit_records()[0]
    assert record["allowed"] is False and "not complete within" in record["error"]


def test_trickled_body_does_not_renew_the_timeout(h2corn_server: ExtauthzProcess) -> None:
    """One byte every 0.3 s never leaves the body idle for a second: the deadline is total."""
    with client(h2corn_server) as c:
        sid = unfinished(c, 10)
        state = c.streams[sid]
        for _ in range(200):  # up to ~60 s; ends when the server answers
            if c.wait(lambda: state.finished, 0.3):
                break
            c.send(sid, b"x")
        assert denied(state)
    assert reasons_in(h2corn_server, 1) == ["resource_limit"]


def test_declared_length_over_the_cap_is_refused_before_the_body_is_sent(
    h2corn_server: ExtauthzProcess,
) -> None:
    with client(h2corn_server) as c:
        sid = unfinished(c, 100, declared=10 * CAP)
        state = c.streams[sid]
        assert c.wait(lambda: state.finished, GENEROUS)
        assert denied(state)
        assert state.sent == 105  # refused on the frame header, not after 10 x CAP bytes
    record = h2corn_server.wait_audit(1, timeout=GENEROUS)[0]
    assert record["reason"] == "malformed_check_request" and "larger than" in record["error"]


def test_body_over_the_cap_is_refused_while_reading(h2corn_server: ExtauthzProcess) -> None:
    """A frame header within the cap, then more bytes than it announced: refused at the cap,
    the stream ends (answered or reset) long before the client could send all it meant to."""
    with client(h2corn_server) as c:
        sid = c.open()
        head = b"\x00" + (CAP - 10).to_bytes(4, "big")
        sent = c.send(sid, head + bytes(50 * CAP), timeout=5.0)
        state = c.streams[sid]
        assert c.wait(lambda: state.finished, GENEROUS)
        assert sent < 50 * CAP
        assert allowed_check(c)


def test_per_connection_budget_refuses_streams_and_others_are_answered(
    h2corn_server: ExtauthzProcess,
) -> None:
    """Six streams of 0.9 x CAP on one connection: the 4 x CAP budget takes four, the others are
    denied at once (well before the 1 s timeout would answer them); a second connection's check
    is decided meanwhile."""
    with client(h2corn_server) as attacker, client(h2corn_server) as other:
        ids = [unfinished(attacker, int(0.9 * CAP)) for _ in range(6)]
        attacker.wait(lambda: sum(attacker.streams[i].finished for i in ids) >= 2, GENEROUS)
        assert allowed_check(other)
        assert attacker.wait(lambda: all(attacker.streams[i].finished for i in ids), GENEROUS)
        assert all(denied(attacker.streams[i]) for i in ids)
    records = h2corn_server.wait_audit(7, timeout=GENEROUS)
    errors = [r.get("error", "") for r in records if r["reason"] == "resource_limit"]
    assert len(errors) == 6
    assert sum("buffered" in e for e in errors) == 2
    assert sum("not complete within" in e for e in errors) == 4


def test_process_budget_spans_connections(tmp_path: Path) -> None:
    config = BOUNDS.replace(f"max_buffered_bytes: {64 * CAP}", f"max_buffered_bytes: {5 * CAP}")
    proc = serve(tmp_path, config=config.replace("body_timeout: 1.0", "body_timeout: 60"))
    try:
        conns = [client(proc) for _ in range(3)]
        ids = [(c, unfinished(c, int(0.9 * CAP))) for c in conns for _ in range(2)]
        # 6 x 0.9 CAP > 5 CAP: at least one stream is refused by the process budget
        deadline = time.monotonic() + GENEROUS
        while not any(c.streams[i].finished for c, i in ids) and time.monotonic() < deadline:
            for c in conns:
                c.pump(0.05)
        assert any(c.streams[i].finished for c, i in ids)
        with client(proc) as fresh:
            assert allowed_check(fresh)  # a complete check holds no budget: still decided
        for c in conns:
            c.close()
    finally:
        proc.stop()
    errors = [r.get("error", "") for r in proc.audit_records() if r["reason"] == "resource_limit"]
    assert errors and all("buffered" in e for e in errors)


def test_grpcio_announces_the_bounds_and_refuses_a_large_declared_message(tmp_path: Path) -> None:
    proc = serve(tmp_path, "--transport", "grpcio")
    try:
        with client(proc) as c:
            assert c.max_streams == 8
            sid = unfinished(c, 100, declared=10 * CAP)
            state = c.streams[sid]
            assert c.wait(lambda: state.finished, GENEROUS)
            assert state.reset is not None or (state.grpc_status or 0) != 0  # RESOURCE_EXHAUSTED
            assert state.sent == 105
        with client(proc) as other:
            assert allowed_check(other)
    finally:
        proc.stop()


def test_bounds_must_nest(tmp_path: Path) -> None:
    from extauthz.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="nest"):
        Settings(max_message_bytes=CAP, max_buffered_bytes_per_connection=CAP).validate()
    with pytest.raises(SettingsError, match="body_timeout"):
        Settings(body_timeout=0).validate()
    Settings().validate()
