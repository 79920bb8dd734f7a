"""The Workload API client against a Workload API server of our own on a unix socket."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from helpers.identity import EC_KEY, bearer, cert_field, jwk, mint, resolve, resolver

from extauthz._pb.spiffe.workload import workload_pb2 as wl
from extauthz._pb.spiffe.workload import workload_pb2_grpc as wl_grpc
from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.identity.bundles import BundleStore
from extauthz.identity.workload_api import WorkloadApiWatcher, split_der_certificates

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"


class FakeWorkloadApi(wl_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self) -> None:
        self.x509: queue.Queue[wl.X509BundlesResponse | None] = queue.Queue()
        self.jwt: queue.Queue[wl.JWTBundlesResponse | None] = queue.Queue()
        self.calls: list[str] = []

    def _stream(self, q: queue.Queue[Any], context: grpc.ServicerContext, name: str) -> Iterator[Any]:
        if ("workload.spiffe.io", "true") not in tuple(context.invocation_metadata()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        self.calls.append(name)
        while context.is_active():
            try:
                msg = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if msg is None:  # end this stream (the client must reconnect)
                return
            yield msg

    def FetchX509Bundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(self.x509, context, "x509")

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        yield from self._stream(self.jwt, context, "jwt")


@pytest.fixture
def workload_api(tmp_path: Path) -> Iterator[tuple[FakeWorkloadApi, str]]:
    servicer = FakeWorkloadApi()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    wl_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)
    sock = tmp_path / "agent.sock"
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    yield servicer, f"unix://{sock}"
    server.stop(0)


def _der(*cas: Any) -> bytes:
    return b"".join(ca.cert.public_bytes(serialization.Encoding.DER) for ca in cas)


def _wait(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    pytest.fail("condition not reached")


def test_der_splitting() -> None:
    a, b = make_ca("example.org"), make_ca("example.org")
    assert [c.serial_number for c in split_der_certificates(_der(a, b))] == [
        a.cert.serial_number,
        b.cert.serial_number,
    ]
    with pytest.raises(ValueError):
        split_der_certificates(_der(a)[:-3])


def test_bundles_stream_and_rotate(workload_api: tuple[FakeWorkloadApi, str]) -> None:
    servicer, address = workload_api
    store = BundleStore()
    watcher = WorkloadApiWatcher(address, store, initial_backoff=0.05)
    watcher.start()
    try:
        ca1, ca2 = make_ca("example.org"), make_ca("example.org")
        leaf1, leaf2 = issue_svid(ca1, FRONTEND), issue_svid(ca2, FRONTEND)
        servicer.x509.put(wl.X509BundlesResponse(bundles={"spiffe://example.org": _der(ca1)}))
        _wait(lambda: store.current.get("example.org") is not None)
        assert resolve(resolver("", store.current), certificate=cert_field(leaf1)).identity.peer_verified
        assert resolve(resolver("", store.current), certificate=cert_field(leaf2)).status == 403
        # Rotation: the next message carries both, then only the new CA.
        servicer.x509.put(wl.X509BundlesResponse(bundles={"spiffe://example.org": _der(ca1, ca2)}))
        _wait(lambda: len(store.current.get("example.org").x509_authorities) == 2)  # type: ignore[union-attr]
        servicer.x509.put(wl.X509BundlesResponse(bundles={"spiffe://example.org": _der(ca2)}))
        _wait(lambda: store.current.get("example.org").x509_authorities == (ca2.cert,))  # type: ignore[union-attr]
        assert resolve(resolver("", store.current), certificate=cert_field(leaf1)).status == 403
        assert resolve(resolver("", store.current), certificate=cert_field(leaf2)).identity.peer_verified
        # JWT bundles arrive on their own stream and make JWT-SVIDs verifiable.
        doc = json.dumps({"keys": [{**jwk(EC_KEY, "e1"), "use": "jwt-svid"}]}).encode()
        servicer.jwt.put(wl.JWTBundlesResponse(bundles={"spiffe://example.org": doc}))
        _wait(lambda: bool(store.current.get("example.org").jwt_keys.keys))  # type: ignore[union-attr]
        rule = (
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
            "metadata: {name: s, namespace: istio-system}\n"
            "spec: {jwtRules: [{issuer: 'spiffe://example.org', audiences: [api]}]}\n"
        )
        now = int(time.time())
        token = mint({"sub": FRONTEND, "aud": "api", "exp": now + 60}, key=EC_KEY, alg="ES256", kid="e1")
        res = resolve(resolver(rule, store.current), headers=bearer(token))
        assert res.identity.token is not None and res.identity.token.subject == FRONTEND
        # The X.509 half is kept when only JWT bundles change.
        assert store.current.get("example.org").x509_authorities == (ca2.cert,)  # type: ignore[union-attr]
        # A stream that ends is reopened; bundles stay in force meanwhile.
        servicer.x509.put(None)
        _wait(lambda: servicer.calls.count("x509") >= 2)
        assert store.current.get("example.org") is not None
    finally:
        watcher.stop()


def test_file_bundle_wins_over_workload_api(
    tmp_path: Path, workload_api: tuple[FakeWorkloadApi, str]
) -> None:
    servicer, address = workload_api
    file_ca, api_ca = make_ca("example.org"), make_ca("example.org")
    path = tmp_path / "b.pem"
    path.write_bytes(file_ca.cert_pem)
    store = BundleStore.from_flags([f"example.org={path}"])
    store.load()
    watcher = WorkloadApiWatcher(address, store, initial_backoff=0.05)
    watcher.start()
    try:
        servicer.x509.put(
            wl.X509BundlesResponse(
                bundles={
                    "spiffe://example.org": _der(api_ca),
                    "spiffe://other.org": _der(make_ca("other.org")),
                }
            )
        )
        _wait(lambda: store.current.get("other.org") is not None)
        assert store.current.get("example.org").x509_authorities == (file_ca.cert,)  # type: ignore[union-attr]
    finally:
        watcher.stop()


def test_served_process_takes_bundles_from_spiffe_endpoint_socket(
    tmp_path: Path, workload_api: tuple[FakeWorkloadApi, str]
) -> None:
    import urllib.parse

    from helpers import ExtauthzProcess, write_policies

    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
    from extauthz.tools.samples import check_request

    servicer, address = workload_api
    ca = make_ca("example.org")
    servicer.x509.put(wl.X509BundlesResponse(bundles={"spiffe://example.org": _der(ca)}))
    policies = write_policies(
        tmp_path / "policies",
        {
            "p.yaml": "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: strict, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n"
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
            "metadata: {name: all, namespace: istio-system}\nspec: {rules: [{}]}\n"
        },
    )
    proc = ExtauthzProcess(policies, tmp_path / "run", env={"SPIFFE_ENDPOINT_SOCKET": address}).start()
    try:
        leaf = issue_svid(ca, FRONTEND).cert_pem.decode()
        msg = check_request(certificate=urllib.parse.quote(leaf, safe=""))

        def allowed() -> bool:
            with grpc.insecure_channel(proc.grpc_target) as ch:
                call = ch.unary_unary("/envoy.service.auth.v3.Authorization/Check")
                return ext.CheckResponse.FromString(call(msg.SerializeToString(), timeout=5)).status.code == 0

        _wait(allowed, timeout=10)
    finally:
        proc.stop()
