"""``extauthz test DIR CASES.yaml``: request fixtures with expected decisions, for CI.

A cases file (strictly read, like policies)::

    defaults:                     # optional: merged under every case's request
      context_extensions: {namespace: shop}
    cases:
    - name: frontend reads items
      request:
        source: {principal: spiffe://example.org/ns/shop/sa/frontend, address: 10.0.0.5}
        destination: {principal: spiffe://example.org/ns/shop/sa/api, address: 10.0.0.9, port: 8443}
        method: GET
        path: /api/items          # query allowed; evaluated without it
        host: api.shop.svc
        headers: {x-env: prod}
        context_extensions: {app: api}
        sni: api.shop.svc
        token: {iss: https://idp.example, sub: alice, aud: [api], groups: [dev]}  # validated claims
      expect: allow               # or deny, or {allowed, status, policy, rule, reason}

``token`` stands for a token the service has already validated: its claims feed
``requestPrincipals`` and ``request.auth.*``. Signatures are not part of a policy test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from extauthz import reasons
from extauthz.decision.decision import Decision, decide
from extauthz.envoy.request import from_check_request
from extauthz.identity.model import Token, establish
from extauthz.policy.engine import Engine
from extauthz.tools.samples import check_request


class CasesError(ValueError):
    """A cases file that cannot be used."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    passed: bool
    expected: dict[str, Any]
    actual: dict[str, Any]
    mismatches: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "expected": self.expected,
                "actual": self.actual, "mismatches": list(self.mismatches)}


_REQUEST_KEYS = {"source", "destination", "method", "path", "host", "headers", "context_extensions",
                 "sni", "token", "request_id"}
_PEER_KEYS = {"principal", "address", "port"}
_EXPECT_KEYS = {"allowed", "status", "policy", "rule", "reason"}


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CasesError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CasesError(f"{path}: expected a mapping with a 'cases' list")
    unknown = set(data) - {"cases", "defaults"}
    if unknown:
        raise CasesError(f"{path}: unknown top-level keys {sorted(unknown)}")
    defaults = data.get("defaults") or {}
    _check_request(defaults, f"{path}: defaults")
    cases = []
    for i, case in enumerate(data["cases"]):
        label = f"{path}: cases[{i}]"
        if not isinstance(case, dict):
            raise CasesError(f"{label}: expected a mapping")
        extra = set(case) - {"name", "request", "expect"}
        if extra:
            raise CasesError(f"{label}: unknown keys {sorted(extra)}")
        name = str(case.get("name") or f"case {i}")
        request = case.get("request") or {}
        _check_request(request, f"{label} ({name})")
        cases.append({"name": name, "request": _merge(defaults, request),
                      "expect": _expectation(case.get("expect"), f"{label} ({name})")})
    return cases


def _check_request(req: Any, label: str) -> None:
    if not isinstance(req, dict):
        raise CasesError(f"{label}: request must be a mapping")
    extra = set(req) - _REQUEST_KEYS
    if extra:
        raise CasesError(f"{label}: unknown request keys {sorted(extra)} (known: {sorted(_REQUEST_KEYS)})")
    for peer in ("source", "destination"):
        if peer in req and (not isinstance(req[peer], dict) or set(req[peer]) - _PEER_KEYS):
            raise CasesError(f"{label}: {peer} takes {sorted(_PEER_KEYS)}")
    for m in ("headers", "context_extensions", "token"):
        if m in req and not isinstance(req[m], dict):
            raise CasesError(f"{label}: {m} must be a mapping")


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _expectation(raw: Any, label: str) -> dict[str, Any]:
    if raw in ("allow", "deny"):
        return {"allowed": raw == "allow"}
    if isinstance(raw, dict) and raw and not set(raw) - _EXPECT_KEYS:
        return dict(raw)
    raise CasesError(f"{label}: expect must be allow, deny or a mapping of {sorted(_EXPECT_KEYS)}")


def evaluate_case(engine: Engine, request: Mapping[str, Any]) -> Decision:
    src = request.get("source") or {}
    dst = request.get("destination") or {}
    kw: dict[str, Any] = {
        "principal": src.get("principal", ""),
        "source_address": str(src.get("address", "10.0.0.5")),
        "destination_principal": dst.get("principal", ""),
        "destination_address": str(dst.get("address", "10.0.0.9")),
        "destination_port": int(dst.get("port", 8443)),
        "method": str(request.get("method", "GET")),
        "path": str(request.get("path", "/")),
        "host": str(request.get("host", "localhost")),
        "headers": {str(k).lower(): str(v) for k, v in (request.get("headers") or {}).items()},
        "context_extensions": {str(k): str(v) for k, v in (request.get("context_extensions") or {}).items()},
        "sni": str(request.get("sni", "")),
        "request_id": str(request.get("request_id", "")),
    }
    req = from_check_request(check_request(**kw))
    claims = request.get("token")
    if claims is None:
        return decide(engine, req)
    decision = decide(engine, req)  # path and peer checks exactly as served
    if decision.reason not in reasons.CACHEABLE:  # decided by the policy set alone
        return decision
    aud = claims.get("aud", ())
    token = Token(
        issuer=str(claims.get("iss", "")),
        subject=str(claims.get("sub", "")),
        audiences=(aud,) if isinstance(aud, str) else tuple(str(a) for a in aud),
        presenter=str(claims.get("azp", "")),
        claims=dict(claims),
    )
    identity = dataclasses.replace(establish(req), token=token)
    v = engine.evaluate(req, identity)
    return dataclasses.replace(
        decision, allowed=v.allowed, status=200 if v.allowed else 403, reason=v.reason,
        policy=v.policy, rule=v.rule, identity=identity,
    )


def run_cases(engine: Engine, cases: list[dict[str, Any]]) -> list[CaseResult]:
    results = []
    for case in cases:
        d = evaluate_case(engine, case["request"])
        actual = {"allowed": d.allowed, "status": d.status, "policy": d.policy, "rule": d.rule,
                  "reason": d.reason}
        expected = case["expect"]
        mismatches = tuple(
            f"{k}: expected {expected[k]!r}, got {actual[k]!r}" for k in expected if expected[k] != actual[k]
        )
        results.append(CaseResult(case["name"], not mismatches, expected, actual, mismatches))
    return results
