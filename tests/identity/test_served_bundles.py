"""``extauthz serve`` with --trust-bundle: a bundle file change (watched) and SIGHUP take effect."""

from __future__ import annotations

import signal
import time
import urllib.parse
from pathlib import Path

import grpc
from helpers import ExtauthzProcess, write_policies

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.tools.samples import check_request

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


def _check(target: str, cert_pem: bytes) -> int:
    msg = check_request(certificate=urllib.parse.quote(cert_pem.decode(), safe=""))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        resp = ext.CheckResponse.FromString(call(msg.SerializeToString(), timeout=5))
    return resp.status.code


def _until(pred: object, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_bundle_rotation_in_a_served_process(tmp_path: Path) -> None:
    old_ca, new_ca = make_ca("example.org"), make_ca("example.org")
    old_leaf, new_leaf = issue_svid(old_ca, FRONTEND).cert_pem, issue_svid(new_ca, FRONTEND).cert_pem
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(old_ca.cert_pem)
    policies = write_policies(tmp_path / "policies", {"p.yaml": POLICY})
    proc = ExtauthzProcess(
        policies, tmp_path / "run", extra_args=["--trust-bundle", f"example.org={bundle}"]
    ).start()
    try:
        target = proc.grpc_target
        assert _check(target, old_leaf) == 0
        assert _check(target, new_leaf) != 0
        bundle.write_bytes(new_ca.cert_pem)  # the watcher picks this up
        assert _until(lambda: _check(target, new_leaf) == 0)
        assert _check(target, old_leaf) != 0
        # A broken file keeps the last good bundle; once fixed it is re-read (watcher, SIGHUP).
        bundle.write_bytes(b"broken")
        time.sleep(0.5)
        assert _check(target, new_leaf) == 0
        bundle.write_bytes(old_ca.cert_pem + new_ca.cert_pem)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        assert _until(lambda: _check(target, old_leaf) == 0)
    finally:
        proc.stop()
