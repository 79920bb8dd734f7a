"""The generated cluster's active gRPC health check against real extauthz replicas.

Two extauthz processes behind one real Envoy (the cluster ``extauthz envoy-config`` prints, with
its health check on). Envoy must see both healthy — which it only does if extauthz answers
SERVING for the service name the generator asks about — and when one replica is stopped with
SIGTERM (what Kubernetes sends) while requests keep coming, it exits 0, Envoy marks it failed,
and every request is decided by a replica: the generated retry policy moves checks that hit
the stopping replica to the other one, so a rolling update causes no spurious 403.
"""

from __future__ import annotations

import collections
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import DevPki, EnvoyProcess, ExtauthzProcess, envoy_binary, https_request

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

REPO = Path(__file__).resolve().parents[2]


def _health(envoy: EnvoyProcess) -> dict[str, str]:
    """endpoint -> health_flags of the extauthz cluster, from the admin /clusters page."""
    _, body = envoy.admin_get("/clusters")
    return dict(re.findall(r"^extauthz::([^:]+:\d+)::health_flags::(\S+)$", body, re.M))


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_health_checked_replicas_and_sigterm_drain(
    tmp_path: Path,
    pki: DevPki,
    extauthz_factory: Callable[..., ExtauthzProcess],
    envoy_factory: Callable[..., EnvoyProcess],
) -> None:
    # drain_delay above Envoy's 2 s health-check interval: Envoy sees NOT_SERVING and moves away
    # while the replica still decides; the generated retry policy covers what is left.
    config = tmp_path / "drain.yaml"
    config.write_text("drain_delay: 2.5\n")
    a = extauthz_factory(REPO / "policies", extra_args=["--config", str(config)])
    b = extauthz_factory(REPO / "policies")
    envoy = envoy_factory(
        [a.endpoint, b.endpoint], authz_health_check=True, context_extensions={"namespace": "shop"}
    )
    endpoints = {a.endpoint, b.endpoint}
    assert _wait(lambda: _health(envoy) == dict.fromkeys(endpoints, "healthy")), _health(envoy)

    def get() -> int:
        return https_request(envoy.listen_port, "GET", "/api/items", ca_file=pki.ca_file,
                             client=pki.files["frontend"]).status

    assert [get() for _ in range(6)] == [200] * 6
    results: collections.Counter[int] = collections.Counter()
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            results[get()] += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        assert a.stop() == 0  # SIGTERM: drains and exits 0
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert "stopping: NOT_SERVING, still deciding" in a.stderr_text()
    assert "stopping: draining" in a.stderr_text()
    assert set(results) == {200}, results  # no check failed closed during the stop
    assert envoy.stats().get("http.ingress_http.ext_authz.extauthz.error", 0) == 0
    assert _wait(lambda: _health(envoy).get(a.endpoint, "").startswith("/failed_active_hc")), (
        _health(envoy)
    )
    assert _health(envoy)[b.endpoint] == "healthy"
    assert [get() for _ in range(10)] == [200] * 10
    denied = https_request(envoy.listen_port, "DELETE", "/api/items", ca_file=pki.ca_file,
                           client=pki.files["frontend"])
    assert denied.status == 403  # still deciding, not just letting things through
