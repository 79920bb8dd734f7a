"""A SPIFFE Workload API client that streams trust bundles into a ``BundleStore``.

extauthz needs bundles, not an SVID of its own, so it watches ``FetchX509Bundles`` (every trust
domain's X.509 authorities, federated ones included) and ``FetchJWTBundles`` (JWT-SVID keys).
Each message carries the complete set and replaces the previous one: that is how rotation
arrives. A broken stream is reopened with exponential backoff; the last bundles stay in force
meanwhile. (The PyPI ``spiffe`` package streams X.509 *contexts*, which need an SVID, and keeps
no key algorithms: hence this small client over ``protos/spiffe/workload/workload.proto``.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
from cryptography import x509

from extauthz._pb.spiffe.workload import workload_pb2 as wl
from extauthz._pb.spiffe.workload import workload_pb2_grpc as wl_grpc
from extauthz.identity.bundles import BundleError, BundleStore, parse_jwt_bundle
from extauthz.identity.keys import KeySet
from extauthz.identity.model import try_parse_spiffe_id

log = logging.getLogger("extauthz.identity.workload_api")

METADATA = (("workload.spiffe.io", "true"),)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def grpc_target(address: str) -> str:
    """``unix:///path``, ``unix:/path`` or a plain ``host:port`` -> a grpc target."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        return f"unix:{path}"
    if address.startswith("tcp://"):
        return address[len("tcp://") :]
    return address


def split_der_certificates(data: bytes) -> list[x509.Certificate]:
    """Concatenated ASN.1 DER certificates -> certificates."""
    certs = []
    i = 0
    while i < len(data):
        if data[i] != 0x30 or i + 2 > len(data):
            raise BundleError("X.509 bundle is not DER certificates")
        first = data[i + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or i + 2 + n > len(data):
                raise BundleError("bad DER length in X.509 bundle")
            length, header = int.from_bytes(data[i + 2 : i + 2 + n], "big"), 2 + n
        end = i + header + length
        if end > len(data):
            raise BundleError("truncated X.509 bundle")
        try:
            certs.append(x509.load_der_x509_certificate(data[i:end]))
        except ValueError as exc:
            raise BundleError(f"bad certificate in X.509 bundle: {exc}") from None
        i = end
    return certs


def _trust_domain(key: str) -> str | None:
    sid = try_parse_spiffe_id(key)
    if sid is None or sid.path:
        log.warning("Workload API bundle key %r is not a trust domain ID; ignored", key)
        return None
    return sid.trust_domain


class WorkloadApiWatcher:
    def __init__(
        self,
        address: str,
        store: BundleStore,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.address = address
        self.store = store
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(
            grpc_target(address), options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        )
        self._stub = wl_grpc.SpiffeWorkloadAPIStub(self._channel)  # type: ignore[no-untyped-call]
        self._calls: list[Any] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._watch,
                args=(self._x509_stream, self._on_x509),
                daemon=True,
                name="workload-api-x509",
            ),
            threading.Thread(
                target=self._watch,
                args=(self._jwt_stream, self._on_jwt),
                daemon=True,
                name="workload-api-jwt",
            ),
        ]
        self.updates = 0

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for call in self._calls:
                call.cancel()
        self._channel.close()
        for t in self._threads:
            t.join(5)

    # -- streams -----------------------------------------------------------------------------

    def _x509_stream(self) -> Any:
        return self._stub.FetchX509Bundles(wl.X509BundlesRequest(), metadata=METADATA)

    def _jwt_stream(self) -> Any:
        return self._stub.FetchJWTBundles(wl.JWTBundlesRequest(), metadata=METADATA)

    def _watch(self, open_stream: Callable[[], Any], handle: Callable[[Any], None]) -> None:
        backoff = self.initial_backoff
        while not self._stop.is_set():
            call = None
            try:
                call = open_stream()
                with self._lock:
                    self._calls.append(call)
                for message in _iterate(call):
                    handle(message)
                    backoff = self.initial_backoff
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    return
                code = exc.code() if hasattr(exc, "code") else None
                log.warning("Workload API stream failed (%s); retrying in %.1fs", code, backoff)
            except Exception:
                log.exception("Workload API update not applied")
            finally:
                with self._lock:
                    if call is not None and call in self._calls:
                        self._calls.remove(call)
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff)

    # -- updates -----------------------------------------------------------------------------

    def _on_x509(self, message: wl.X509BundlesResponse) -> None:
        bundles: dict[str, tuple[x509.Certificate, ...]] = {}
        current = self.store.current
        for key, der in message.bundles.items():
            td = _trust_domain(key)
            if td is None:
                continue
            try:
                bundles[td] = tuple(split_der_certificates(der))
            except BundleError as exc:
                old = current.get(td)
                log.error("Workload API X.509 bundle for %s unusable (%s); keeping the last one", td, exc)
                if old is not None:
                    bundles[td] = old.x509_authorities
        self.store.update_from_api(bundles, None)
        self.updates += 1
        log.info("Workload API: X.509 bundles for %s", ", ".join(sorted(bundles)) or "no trust domain")

    def _on_jwt(self, message: wl.JWTBundlesResponse) -> None:
        keys: dict[str, KeySet] = {}
        current = self.store.current
        for key, doc in message.bundles.items():
            td = _trust_domain(key)
            if td is None:
                continue
            try:
                keys[td] = parse_jwt_bundle(td, doc)
            except BundleError as exc:
                old = current.get(td)
                log.error("Workload API JWT bundle for %s unusable (%s); keeping the last one", td, exc)
                if old is not None:
                    keys[td] = old.jwt_keys
        self.store.update_from_api(None, keys)
        self.updates += 1
        log.info("Workload API: JWT bundles for %s", ", ".join(sorted(keys)) or "no trust domain")


def _iterate(call: Any) -> Iterator[Any]:
    yield from call


def bundles_message(bundles: Mapping[str, bytes]) -> wl.X509BundlesResponse:
    """Build an X509BundlesResponse (for tests and tools)."""
    return wl.X509BundlesResponse(bundles=dict(bundles))
