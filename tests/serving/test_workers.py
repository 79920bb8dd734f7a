"""``serve --workers N``: addresses, the supervisor (signals, restarts, one audit stream) and
Envoy spreading checks over the workers; on both transports."""

from __future__ import annotations

import io
import os
import signal
import socket
import time
import urllib.request
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import grpc
import pytest
import yaml
from helpers import (
    FRONTEND_ID,
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    envoy_binary,
    grpc_serving,
    https_request,
    validate_config,
    write_policies,
)

from extauthz import cli
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.cli import main as audit_main
from extauthz.serving.workers import worker_settings
from extauthz.settings import Settings, SettingsError, worker_addresses, worker_listen
from extauthz.tools import envoy_config
from extauthz.tools.samples import check_request

TRANSPORTS = ["grpcio", "h2corn"]

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-to-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/api/*"]}}]
"""
EXTRA = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reports, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/reports"]}}]
"""


# --------------------------------------------------------------------------- addresses


def test_worker_addresses_tcp_and_unix() -> None:
    assert worker_addresses("127.0.0.1:9191", 3) == ["127.0.0.1:9191", "127.0.0.1:9192", "127.0.0.1:9193"]
    assert worker_addresses("[::1]:9191", 2) == ["[::1]:9191", "[::1]:9192"]
    assert worker_addresses("unix:/run/x.sock", 3) == [
        "unix:/run/x.sock",
        "unix:/run/x.sock.1",
        "unix:/run/x.sock.2",
    ]
    assert worker_listen("127.0.0.1:9191", 0) == "127.0.0.1:9191"


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.1:65535"])
def test_workers_need_room_for_their_ports(listen: str) -> None:
    with pytest.raises(SettingsError):
        Settings(listen=listen, workers=2).validate()
    Settings(listen=listen, workers=1).validate()


def test_unknown_transport_is_refused() -> None:
    with pytest.raises(SettingsError):
        Settings(transport="carrier-pigeon").validate()


def test_worker_settings() -> None:
    base = Settings(listen="127.0.0.1:9000", workers=4, metrics="127.0.0.1:9900", audit_log="/var/log/a.log")
    w = worker_settings(base, 2)
    assert (w.listen, w.metrics, w.workers, w.audit_log) == ("127.0.0.1:9002", "127.0.0.1:9902", 1, "-")


def _envoy_config(*args: str) -> dict[str, object]:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["envoy-config", *args]) == 0
    doc: dict[str, object] = yaml.safe_load(out.getvalue())
    return doc


def _endpoints(cluster: dict[str, object]) -> list[str]:
    out = []
    for group in cluster["load_assignment"]["endpoints"]:  # type: ignore[index]
        for lb in group["lb_endpoints"]:
            addr = lb["endpoint"]["address"]
            if "pipe" in addr:
                out.append("unix:" + addr["pipe"]["path"])
            else:
                out.append(f"{addr['socket_address']['address']}:{addr['socket_address']['port_value']}")
    return out


def test_envoy_config_lists_every_worker() -> None:
    doc = _envoy_config("--workers", "3", "--endpoint", "10.0.0.7:9191")
    [cluster] = doc["clusters"]  # type: ignore[misc]
    assert _endpoints(cluster) == ["10.0.0.7:9191", "10.0.0.7:9192", "10.0.0.7:9193"]
    doc = _envoy_config("--workers", "2", "--endpoint", "unix:/run/extauthz.sock")
    [cluster] = doc["clusters"]  # type: ignore[misc]
    assert _endpoints(cluster) == ["unix:/run/extauthz.sock", "unix:/run/extauthz.sock.1"]


def test_envoy_config_google_grpc_round_robin_over_workers() -> None:
    doc = _envoy_config("--workers", "2", "--grpc-client", "google_grpc")
    authz = doc["http_connection_manager"]["http_filters"][0]["typed_config"]  # type: ignore[index]
    google = authz["grpc_service"]["google_grpc"]
    assert google["target_uri"] == "ipv4:127.0.0.1:9191,127.0.0.1:9192"
    assert google["channel_args"]["args"]["grpc.lb_policy_name"]["string_value"] == "round_robin"
    assert authz["failure_mode_allow"] is False


def test_google_grpc_targets() -> None:
    assert envoy_config.google_grpc_target(["[::1]:1", "[::1]:2"]) == "ipv6:[::1]:1,[::1]:2"
    assert envoy_config.google_grpc_target(["unix:/s"]) == "unix:/s"
    assert envoy_config.google_grpc_target(["authz.svc:9191"]) == "dns:///authz.svc:9191"
    with pytest.raises(ValueError):
        envoy_config.google_grpc_target(["unix:/a", "unix:/b"])


@pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed")
@pytest.mark.parametrize("client", ["envoy_grpc", "google_grpc"])
def test_bootstraps_validate(tmp_path: Path, client: str) -> None:
    cfg = envoy_config.bootstrap(
        listen_port=10000,
        admin_port=9901,
        upstream="127.0.0.1:8080",
        authz_endpoints=worker_addresses("127.0.0.1:9191", 2),
        grpc_client=client,
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(envoy_config.render_yaml(cfg))
    result = validate_config(path)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- the supervisor


def _consecutive_ports(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65535:
            continue
        try:
            socks = []
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no consecutive free ports")


class Workers(ExtauthzProcess):
    """``serve --workers N`` on N consecutive loopback ports."""

    def __init__(self, policy_dir: Path, workdir: Path, n: int, transport: str, **kw: object) -> None:
        super().__init__(
            policy_dir, workdir, extra_args=["--workers", str(n), "--transport", transport], **kw
        )  # type: ignore[arg-type]
        self.port = _consecutive_ports(n)
        self.n = n

    @property
    def targets(self) -> list[str]:
        return worker_addresses(self.listen, self.n)

    def wait_all_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(grpc_serving(t) for t in self.targets):
            self._check_alive()
            assert time.monotonic() < deadline, self.stderr_text()
            time.sleep(0.1)


def _check(target: str, path: str) -> ext.CheckResponse:
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        data = check_request(path=path, principal=FRONTEND_ID).SerializeToString()
        return ext.CheckResponse.FromString(call(data, timeout=5))


def _worker_pids(proc: ExtauthzProcess) -> list[int]:
    assert proc.pid is not None
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:
                out.append(int(entry.name))
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_supervisor_serves_reloads_restarts_and_drains(tmp_path: Path, transport: str) -> None:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    proc = Workers(policies, tmp_path / "w", 2, transport)
    metrics = _consecutive_ports(2)
    proc.extra_args += ["--metrics", f"127.0.0.1:{metrics}"]
    proc.start()
    try:
        proc.wait_all_serving()
        for i, target in enumerate(proc.targets):
            for _ in range(i + 1):  # worker 0 answers 1 allow, worker 1 answers 2
                assert _check(target, "/api/items").status.code == 0
            assert _check(target, "/reports").status.code != 0
        # Per-worker counters: worker i has its own /metrics on METRICS_PORT + i.
        for i in range(2):
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics + i}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            assert f'extauthz_checks_total{{outcome="allow",reason="allowed"}} {i + 1}.0' in text, text
        # A new policy file reaches every worker (each watches the directory; SIGHUP forwarded).
        (policies / "extra.yaml").write_text(EXTRA)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not all(_check(t, "/reports").status.code == 0 for t in proc.targets):
            assert time.monotonic() < deadline, "reload did not reach every worker"
            time.sleep(0.2)
        # A crashed worker is replaced and serves again.
        victims = _worker_pids(proc)
        assert len(victims) == 2
        os.kill(victims[0], signal.SIGKILL)
        time.sleep(1.5)
        proc.wait_all_serving()
        assert set(_worker_pids(proc)) - set(victims)
        for target in proc.targets:
            assert _check(target, "/api/items").status.code == 0
    finally:
        code = proc.stop()
    assert code == 0, proc.stderr_text()
    records = proc.audit_records()
    # One stream, whole lines only, and every record says which worker decided.
    lines = proc.audit_log.read_text().splitlines()
    assert len(lines) == len(records)
    assert {r["worker"] for r in records} == {0, 1}
    assert "exited with -9; restarting" in proc.stderr_text()
    # ... and one hash chain over all workers' records: it verifies as a whole.
    seqs = [r["seq"] for r in records if "seq" in r]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert audit_main(["audit", "verify", str(proc.audit_log)]) == 0


def test_startup_with_bad_policies_fails_before_forking(tmp_path: Path) -> None:
    policies = write_policies(tmp_path / "policies", {"bad.yaml": "kind: AuthorizationPolicy\nspec: [\n"})
    proc = Workers(policies, tmp_path / "w", 2, "grpcio")
    with pytest.raises(RuntimeError, match="exited with 2"):
        proc.start(timeout=10)
    assert "bad.yaml" in proc.stderr_text()


# --------------------------------------------------------------------------- through Envoy


@pytest.mark.e2e
@pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed")
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_envoy_spreads_checks_over_the_workers(
    tmp_path: Path, pki: DevPki, echo_server: EchoServer, transport: str
) -> None:
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    authz = Workers(policies, tmp_path / "w", 2, transport, audit_log=tmp_path / "audit.log")
    authz.extra_args += ["--trust-bundle", f"example.org={pki.ca_file}"]
    authz.start()
    envoy: EnvoyProcess | None = None
    try:
        authz.wait_all_serving()
        envoy = EnvoyProcess(
            tmp_path / "envoy",
            upstream=echo_server.address,
            authz_endpoints=authz.targets,
            tls=pki.envoy_tls(),
            context_extensions={"namespace": "shop"},
            timeout_s=2.0,
            authz_health_check=True,
        ).start()
        # Envoy's gRPC health checker finds every worker healthy (Health/Check on each address).
        deadline = time.monotonic() + 10
        while envoy.stats().get("cluster.extauthz.membership_healthy") != 2:
            assert time.monotonic() < deadline, {k: v for k, v in envoy.stats().items() if "health" in k}
            time.sleep(0.2)
        for i in range(20):
            r = https_request(
                envoy.listen_port, "GET", f"/api/items/{i}", ca_file=pki.ca_file, client=pki.files["frontend"]
            )
            assert r.status == 200, r
            assert r.json()["headers"].get("x-spiffe-id") == FRONTEND_ID
        r = https_request(
            envoy.listen_port, "GET", "/admin", ca_file=pki.ca_file, client=pki.files["frontend"]
        )
        assert r.status == 403
        records = authz.wait_audit(21)
        per_worker = Counter(rec["worker"] for rec in records)
        assert envoy.stats().get("cluster.extauthz.health_check.failure", 0) == 0
        assert set(per_worker) == {0, 1}, per_worker
        assert min(per_worker.values()) >= 5, per_worker  # round robin: about 10 each
    finally:
        if envoy is not None:
            envoy.stop()
        authz.stop()
