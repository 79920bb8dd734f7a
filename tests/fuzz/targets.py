"""Fuzz targets: each takes arbitrary bytes and raises AssertionError when an invariant breaks.

``check_target``: the bytes are a serialized CheckRequest, answered by ``CheckCore.check`` under
four policy sets. For every one: no exception escapes, the answer decodes as a CheckResponse, the
response, decision and audit record agree, and the audit record is JSON. And nothing is allowed
that the policy set does not allow, judged by an oracle written here from the decoded request
(independent of ``RequestView``/``Engine``):

- no policy loaded, and a deny-all set: never allowed;
- ``ONE``: only ``spiffe://example.org/ns/shop/sa/frontend`` on exactly ``/api/items`` in ``shop``;
- the repository's example policies (``policies/``): health probes (GET/HEAD ``/healthz``,
  ``/readyz``) for anyone, the frontend's GET ``/api/*`` and POST ``/api/orders`` in ``shop``,
  never ``/admin`` or below.

``fields_target``: the same, with the bytes split at NUL into the request's string fields.

``policy_target``: the bytes (as UTF-8, errors replaced) are policy YAML for ``load_text``:
only ``PolicyError`` may come out; a set that loads compiles and evaluates a request.

Used by ``run_atheris.py`` (coverage-guided, libFuzzer) and by the pytest replays.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.envoy.request import from_check_request
from extauthz.identity.model import establish
from extauthz.pipeline import CheckCore
from extauthz.policy import Engine, PolicyError, compile_policies, load_directory, load_text
from extauthz.tools.samples import check_request

REPO = Path(__file__).resolve().parents[2]
FRONTEND = "example.org/ns/shop/sa/frontend"

DENY_ALL = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nothing, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everything, namespace: istio-system}
spec:
  action: DENY
  rules: [{}]
"""

ONE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: one, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/api/items"]}}]
"""


# --------------------------------------------------------------------------- independent oracle


def _raw_headers(msg: ext.CheckRequest) -> dict[str, str]:
    http = msg.attributes.request.http
    out = {k.lower(): v for k, v in http.headers.items()}
    if not out:
        for hv in http.header_map.headers:
            key = hv.key.lower()
            value = hv.value or hv.raw_value.decode("utf-8", "replace")
            out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _path(msg: ext.CheckRequest) -> str:
    raw = msg.attributes.request.http.path or _raw_headers(msg).get(":path", "")
    return raw.partition("?")[0]


def _method(msg: ext.CheckRequest) -> str:
    """As sent: an ALLOW compares methods exactly, as Envoy does (``get`` is not ``GET``)."""
    return msg.attributes.request.http.method or _raw_headers(msg).get(":method", "")


def _peer(msg: ext.CheckRequest) -> str:
    """The source principal without a (case-insensitive) ``spiffe://``; "" when it has none."""
    p = msg.attributes.source.principal
    return p[9:] if p[:9].lower() == "spiffe://" else ""


def _in_shop(msg: ext.CheckRequest) -> bool:
    """The destination namespace: the route's context extension, else the first ``/ns/N/``."""
    ns = msg.attributes.context_extensions.get("namespace")
    if ns:
        return ns == "shop"
    parts = msg.attributes.destination.principal.split("/")
    first = next((parts[i + 1] for i in range(1, len(parts) - 1) if parts[i] == "ns"), "")
    return first == "shop"


def _one_allows(msg: ext.CheckRequest) -> bool:
    return _peer(msg) == FRONTEND and _path(msg) == "/api/items" and _in_shop(msg)


def _examples_allow(msg: ext.CheckRequest) -> bool:
    path, method = _path(msg), _method(msg)
    if path == "/admin" or path.startswith("/admin/"):
        return False
    if method in ("GET", "HEAD") and path in ("/healthz", "/readyz"):
        return True
    if _peer(msg) != FRONTEND or not _in_shop(msg):
        return False
    return (method == "GET" and path.startswith("/api/")) or (method == "POST" and path == "/api/orders")


# --------------------------------------------------------------------------- the check target


def _engine(text: str) -> Engine:
    return compile_policies(load_text(text))


CORES: list[tuple[str, CheckCore, Callable[[ext.CheckRequest], bool]]] = []


def _cores() -> list[tuple[str, CheckCore, Callable[[ext.CheckRequest], bool]]]:
    if not CORES:
        engines: list[tuple[str, Engine | None, Callable[[ext.CheckRequest], bool]]] = [
            ("no-policy", None, lambda m: False),
            ("deny-all", _engine(DENY_ALL), lambda m: False),
            ("one", _engine(ONE), _one_allows),
            ("examples", compile_policies(load_directory(REPO / "policies")), _examples_allow),
        ]
        for name, engine, oracle in engines:
            CORES.append((name, CheckCore(lambda e=engine: e), oracle))  # type: ignore[misc]
    return CORES


def check_target(data: bytes) -> None:
    for name, core, oracle in _cores():
        body, record, decision = core.check(data)  # must not raise
        resp = ext.CheckResponse.FromString(body)  # must decode
        allowed = resp.status.code == 0
        assert allowed == decision.allowed == record["allowed"], (name, resp, decision, record)
        assert allowed == (resp.WhichOneof("http_response") == "ok_response"), (name, resp)
        json.dumps(record)  # the audit writer must be able to serialise it
        if not allowed:
            assert 400 <= resp.denied_response.status.code < 600, (name, resp)
            continue
        msg = ext.CheckRequest.FromString(data)  # an allowed request decoded
        assert oracle(msg), f"{name}: allowed a request the policy does not allow: {msg}"
        view = from_check_request(msg)
        assert view.problem is None, (name, view.problem)
        if _peer(msg):
            ids = [h.header.value for h in resp.ok_response.headers if h.header.key == "x-spiffe-id"]
            assert ids == ["spiffe://" + _peer(msg)], (name, ids)


def fields_target(data: bytes) -> None:
    """The same invariants, with the bytes split at NUL into the request's string fields.

    Raw protobuf bytes rarely decode into a request near a policy's edge; here every mutation
    lands in a principal, path, method, host, header or namespace, so the oracle is exercised
    on look-alikes of the one allowed principal and path.
    """
    check_target(fields_request(data).SerializeToString())


FIELDS = ("principal", "path", "method", "host", "namespace", "destination_principal", "hname", "hvalue")


def fields_request(data: bytes) -> ext.CheckRequest:
    parts = [p.decode("utf-8", "replace") for p in data.split(b"\x00")]
    parts += [""] * (len(FIELDS) - len(parts))
    f = dict(zip(FIELDS, parts, strict=False))
    headers = {f["hname"]: f["hvalue"]} if f["hname"] else {}
    return check_request(
        principal=f["principal"],
        path=f["path"],
        method=f["method"],
        host=f["host"],
        headers=headers,
        context_extensions={"namespace": f["namespace"]} if f["namespace"] else {},
        destination_principal=f["destination_principal"],
    )


def fields_bytes(**kw: str) -> bytes:
    return b"\x00".join(kw.get(name, "").encode() for name in FIELDS)


# --------------------------------------------------------------------------- the policy target

_PROBE = check_request()


def policy_target(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        policies = load_text(text)
    except PolicyError:
        return
    engine = compile_policies(policies)  # what loads must compile
    view = from_check_request(_PROBE)
    engine.evaluate(view, establish(view))


TARGETS: dict[str, Callable[[bytes], None]] = {
    "check": check_target,
    "fields": fields_target,
    "policy": policy_target,
}


def seeds(target: str) -> list[bytes]:
    """A small starting corpus: real CheckRequests / the example policy files."""
    if target == "fields":
        ok = {"principal": "spiffe://" + FRONTEND, "path": "/api/items", "method": "GET",
              "host": "api.shop.svc", "namespace": "shop"}
        return [
            fields_bytes(**ok),
            fields_bytes(**{**ok, "path": "/api/orders", "method": "POST"}),
            fields_bytes(**{**ok, "path": "/healthz", "principal": ""}),
            fields_bytes(**{**ok, "path": "/admin/x"}),
            fields_bytes(**{**ok, "namespace": "", "destination_principal": "spiffe://example.org/ns/shop/sa/api"}),
            fields_bytes(**{**ok, "hname": "x-role", "hvalue": "admin"}),
        ]
    if target == "policy":
        out = [p.read_bytes() for p in sorted((REPO / "policies").glob("*.yaml"))]
        return [*out, DENY_ALL.encode(), ONE.encode()]
    reqs = [
        check_request(),
        check_request(path="/api/items"),
        check_request(path="/api/items?x=1", context_extensions={"namespace": "shop"}),
        check_request(path="/healthz", principal=""),
        check_request(method="POST", path="/api/orders"),
        check_request(path="/admin/x"),
        check_request(principal="spiffe://example.org/ns/other/sa/x", path="/api/items"),
    ]
    return [r.SerializeToString() for r in reqs]
