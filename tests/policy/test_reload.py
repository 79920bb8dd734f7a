# ruff: noqa: E501
"""Hot reload: atomic swaps under load, broken edits keep the last good set, watcher and SIGHUP."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.pipeline import CheckCore
from extauthz.policy import Engine
from extauthz.policy.store import DirectoryWatcher, PolicyStore
from extauthz.serving.health import POLICY_HEALTH_SERVICE
from extauthz.serving.service import Service
from extauthz.settings import Settings
from extauthz.tools.samples import check_request

HEADER = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
FILLER = 40  # policies per set: a compile takes long enough for checks to overlap it


def policy_set(name: str) -> str:
    """Set A allows /a and denies /b; set B the other way round. Marked at both ends."""
    allow, deny = ("/a", "/b") if name == "A" else ("/b", "/a")
    docs = [f"{HEADER}metadata: {{name: begin-{name}, namespace: istio-system}}\nspec: {{}}\n"]
    docs.append(
        f"{HEADER}metadata: {{name: deny-{name}, namespace: istio-system}}\n"
        f"spec: {{action: DENY, rules: [{{to: [{{operation: {{paths: ['{deny}']}}}}]}}]}}\n"
    )
    for i in range(FILLER):
        docs.append(
            f"{HEADER}metadata: {{name: filler-{name}-{i}, namespace: ns{i}}}\n"
            f"spec: {{rules: [{{to: [{{operation: {{paths: ['/filler/{i}/*']}}}}]}}]}}\n"
        )
    docs.append(
        f"{HEADER}metadata: {{name: allow-{name}, namespace: istio-system}}\n"
        f"spec: {{rules: [{{to: [{{operation: {{paths: ['{allow}']}}}}]}}]}}\n"
    )
    docs.append(f"{HEADER}metadata: {{name: end-{name}, namespace: istio-system}}\nspec: {{}}\n")
    return "---\n".join(docs)


EXPECTED = {
    "A": {"/a": (True, "istio-system/allow-A"), "/b": (False, "istio-system/deny-A"), "/c": (False, None)},
    "B": {"/a": (False, "istio-system/deny-B"), "/b": (True, "istio-system/allow-B"), "/c": (False, None)},
}
N_POLICIES = FILLER + 4


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name("." + path.name + ".tmp")  # hidden: never loaded
    tmp.write_text(text)
    os.replace(tmp, path)


def set_of(engine: Engine) -> str:
    names = [p.name for p in engine.policies.authorization]
    assert len(names) == N_POLICIES, f"partial set: {len(names)} policies"
    begin, end = names[0], names[-1]
    assert begin.startswith("begin-") and end == "end-" + begin[6:], (begin, end)
    return begin[6:]


def test_reload_under_load_100_edits(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    write_atomically(policy, policy_set("A"))
    store = PolicyStore(tmp_path)
    store.load()
    seen: list[Engine | None] = [None]

    def current() -> Engine | None:
        e = store.engine
        seen[0] = e
        return e

    core = CheckCore(current)
    probes = {p: check_request(path=p).SerializeToString() for p in ("/a", "/b", "/c")}
    stop = threading.Event()
    results: list[tuple[str, str, bool, str | None, str]] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            while not stop.is_set():
                for path, data in probes.items():
                    _, _, d = core.check(data)
                    engine = seen[0]
                    assert engine is not None
                    results.append((set_of(engine), path, d.allowed, d.policy, d.reason))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    checker = threading.Thread(target=load)
    checker.start()
    ok_edits = bad_edits = 0
    try:
        for edit in range(100):
            if edit % 10 == 9:
                write_atomically(policy, policy_set("A") + "---\n" + HEADER + "metadata: {name: x}\nspec: {rulez: []}\n")
                assert store.reload() is False
                assert store.status().last_error is not None and "rulez" in store.status().last_error
                bad_edits += 1
            else:
                write_atomically(policy, policy_set("B" if edit % 2 == 0 else "A"))
                assert store.reload() is True
                assert store.status().last_reload_ok
                ok_edits += 1
            time.sleep(0.002)
    finally:
        stop.set()
        checker.join(30)
    assert not errors, errors[0]
    assert (ok_edits, bad_edits) == (90, 10)
    assert store.generation == 1 + ok_edits
    failed = [r for r in results if r[4] not in ("allowed", "denied_by_policy", "no_matching_policy")]
    assert not failed, failed[:5]
    wrong = [r for r in results if (r[2], r[3]) != EXPECTED[r[0]][r[1]]]
    assert not wrong, wrong[:5]
    sets_seen = {r[0] for r in results}
    assert sets_seen == {"A", "B"}, sets_seen
    assert len(results) > 300
    print(f"reload under load: {len(results)} checks, sets seen {sorted(sets_seen)}, "
          f"generation {store.generation}, {ok_edits} good + {bad_edits} broken edits")


def test_broken_edit_keeps_last_good_set_then_recovers(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    write_atomically(policy, policy_set("A"))
    store = PolicyStore(tmp_path)
    store.load()
    audit = AuditLog(StreamSink(io.StringIO()))
    service = Service(Settings(policies=str(tmp_path)), store, audit)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    def health(name: str) -> Any:
        return service.health.Check(health_pb2.HealthCheckRequest(service=name), None).status

    def metric(name: str, labels: dict[str, str] | None = None) -> float:
        v = service.metrics.registry.get_sample_value(name, labels or {})
        return v if v is not None else 0.0

    write_atomically(policy, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: [\n")
    assert store.reload() is False
    assert set_of(store.engine) == "A" if store.engine else False
    assert health("") == serving and health(POLICY_HEALTH_SERVICE) == not_serving
    assert metric("extauthz_policy_last_reload_ok") == 0
    assert metric("extauthz_serving") == 1  # the Authorization service serves the last good set
    assert metric("extauthz_policy_reloads_total", {"result": "failure"}) == 1
    status = store.status()
    assert status.last_error and "p.yaml:4: YAML error" in status.last_error and status.generation == 1
    allowed = CheckCore(lambda: store.engine).check(check_request(path="/a").SerializeToString())[2]
    assert allowed.allowed  # still set A

    write_atomically(policy, policy_set("B"))
    assert store.reload() is True
    assert set_of(store.engine) == "B" if store.engine else False
    assert health(POLICY_HEALTH_SERVICE) == serving
    assert metric("extauthz_policy_last_reload_ok") == 1
    assert metric("extauthz_policy_generation") == 2
    assert store.status().last_error is None
    service.start_draining()
    assert health("") == not_serving and metric("extauthz_serving") == 0
    audit.close()


def test_watcher_reloads_on_edit(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    write_atomically(policy, policy_set("A"))
    store = PolicyStore(tmp_path)
    store.load()
    watcher = DirectoryWatcher(store, debounce_ms=50)
    watcher.start()
    try:
        time.sleep(0.3)  # let the watch start
        write_atomically(policy, policy_set("B"))
        deadline = time.monotonic() + 10
        while store.generation < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.engine is not None and set_of(store.engine) == "B"
        write_atomically(policy, "kind: [")  # broken
        deadline = time.monotonic() + 10
        while store.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.last_error is not None and set_of(store.engine) == "B"
        write_atomically(policy, policy_set("A"))
        deadline = time.monotonic() + 10
        while store.generation < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set_of(store.engine) == "A" and store.last_error is None
    finally:
        watcher.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(sys.platform != "linux", reason="signals")
@pytest.mark.parametrize("transport", ["h2corn", "grpcio"])
def test_sighup_reloads_a_running_server(tmp_path: Path, transport: str) -> None:
    # --policies is a symlink; repointing it is invisible to the directory watcher (it watches the
    # old target), so only SIGHUP can bring the new set in.
    (tmp_path / "set-a").mkdir()
    (tmp_path / "set-b").mkdir()
    write_atomically(tmp_path / "set-a" / "p.yaml", policy_set("A"))
    write_atomically(tmp_path / "set-b" / "p.yaml", policy_set("B"))
    link = tmp_path / "policies"
    link.symlink_to(tmp_path / "set-a")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "extauthz", "serve", "--policies", str(link), "--listen", f"127.0.0.1:{port}",
         "--audit-log", str(tmp_path / "audit.jsonl"), "--transport", transport],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")

        def allowed(path: str) -> bool:
            data = call(check_request(path=path).SerializeToString(), timeout=5)
            return ext.CheckResponse.FromString(data).status.code == 0

        assert allowed("/a") and not allowed("/b")
        tmp_link = tmp_path / "policies.new"
        tmp_link.symlink_to(tmp_path / "set-b")
        os.replace(tmp_link, link)
        time.sleep(1.0)
        assert allowed("/a"), "changed without SIGHUP: the watcher saw the swap"
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while allowed("/a") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert allowed("/b") and not allowed("/a")
        health = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

        def policy_health() -> Any:
            return health(health_pb2.HealthCheckRequest(service=POLICY_HEALTH_SERVICE), timeout=5).status

        assert policy_health() == health_pb2.HealthCheckResponse.SERVING
        # A broken set: refused, set B keeps serving, the health detail says so.
        (tmp_path / "set-c").mkdir()
        (tmp_path / "set-c" / "p.yaml").write_text("kind: [\n")
        tmp_link.symlink_to(tmp_path / "set-c")
        os.replace(tmp_link, link)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while policy_health() == health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert policy_health() == health_pb2.HealthCheckResponse.NOT_SERVING
        overall = health(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        assert overall == health_pb2.HealthCheckResponse.SERVING
        assert allowed("/b") and not allowed("/a")
        channel.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
