"""Differential test: extauthz against the real Envoy's RBAC filter, configured as Istio would
configure it (``translate.py``), on the same requests (issue 12).

The relation: on canonical requests extauthz and Envoy decide alike; on spelling variants, every
request extauthz allows Envoy allows too, and every variant of a canonical request Envoy denies
is denied by extauthz (extauthz may refuse more: 400, default deny). extauthz is default-deny and
Istio with no ALLOW policy allows, so an ALLOW policy is compared as "allow iff matched" and a
DENY policy as "deny iff matched" (extauthz gets an allow-everything policy beside a DENY).

Request principals and ``request.auth.*`` are an approximation (Istio matches them on the
metadata of its own ``istio_authn`` filter, which plain Envoy does not have): Envoy gets a
``jwt_authn`` filter before RBAC (the test issuer, an inline JWKS of an RS256 key the test
generates, the verified payload in metadata, a missing token allowed so RBAC decides) and the
translation matches ``iss``/``sub``/``aud``/``azp``/claims in that payload (``translate.py``);
extauthz gets the same issuer and JWKS as a RequestAuthentication, and the same tokens in
``Authorization: Bearer``. A token that fails verification is a 401 on both sides (Envoy's
jwt_authn before RBAC; extauthz ``invalid_token``): agreement, "both deny". Every value form of
these fields is expressible this way (none is skipped). Not covered, because the approximation
cannot say what Istio does: a token without ``sub`` (istio_authn's principal), non-string claim
values (numbers, booleans) and space-separated string claims (istio_authn's own conversion of
claims to string lists).

Token spellings (variants of a request with a valid token): ``Bearer`` with two spaces and
``?access_token=`` agree. Two spellings that Envoy's jwt_authn (1.40) reads as *no* token while
an upstream may take the token (``TOKEN_REFUSED``, checked on their own): ``Authorization: bearer
<jwt>`` (jwt_authn matches the ``Bearer `` prefix case-sensitively) and ``Authorization: <jwt>``
(no scheme). Reading them would let an ALLOW match more than Istio; ignoring them would let them
past a DENY on ``requestPrincipals``: extauthz refuses both (401 ``invalid_token``,
``extauthz/identity/jwt_rules.py``), which the relation accepts (extauthz may refuse more).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import yaml

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.devenv.net import free_port
from extauthz.devenv.processes import envoy_binary
from extauthz.pipeline import CheckCore
from extauthz.policy import PolicyError, authorization, compile_policies, load_text, matchers
from extauthz.tools.samples import check_request

from .cases import JWT_FIELDS, TOKEN_REFUSED, Case, Req, all_cases
from .rig import ALLOW, DENY, REFUSED, UNAUTHENTICATED, Envoy, Pki, h2_request, jwt_authn, route
from .tokens import ISS, jwks, request_authentication
from .translate import rbac

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(envoy_binary() is None, reason="envoy binary not installed"),
]

ALLOW_ALL = {
    "apiVersion": "security.istio.io/v1",
    "kind": "AuthorizationPolicy",
    "metadata": {"name": "all", "namespace": "istio-system"},
    "spec": {"action": "ALLOW", "rules": [{}]},
}


@dataclass
class Oracle:
    port: int
    cases: list[Case]
    envoy: dict[tuple[str, Req], str]  # (case id, request) -> allow / deny / refused N

    @property
    def size(self) -> tuple[int, int]:
        return len(self.cases), len(self.envoy)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    work = tmp_path_factory.mktemp("differential")
    pki = Pki(work)
    port = free_port()
    cases = all_cases(port)
    envoy = Envoy(work, pki, [route(c.id, rbac(c.policy)) for c in cases], port=port,
                  jwt=jwt_authn(ISS, jwks())).start()
    try:
        keys = [(c.id, r) for c in cases for g in c.groups for r in (g.canonical, *g.variants)]
        sent = [(r.who, r.sni, h2_request(r.method, r.sent_path(), r.host, r.sent_headers(), cid))
                for cid, r in keys]
        outcomes = envoy.send_all(sent)
    finally:
        envoy.stop()
    yield Oracle(port, cases, dict(zip(keys, outcomes, strict=True)))


def _core(case: Case) -> CheckCore:
    docs = [case.policy] + ([ALLOW_ALL] if case.action == "DENY" else [])
    if case.fields & JWT_FIELDS:
        docs.append(request_authentication())
    engine = compile_policies(load_text(yaml.safe_dump_all(docs), f"case-{case.id}.yaml"))
    return CheckCore(lambda: engine)


def _joined(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """As Envoy forwards headers to ext_authz: lower-case names, repeats joined with ','."""
    out: dict[str, str] = {}
    for k, v in headers:
        k = k.lower()
        out[k] = f"{out[k]},{v}" if k in out else v
    return out


def extauthz_decides(core: CheckCore, req: Req, port: int) -> str:
    msg = check_request(
        principal=req.who or "", method=req.method, path=req.sent_path(), host=req.host,
        headers=_joined(req.sent_headers()), source_address="127.0.0.1",
        destination_principal="", destination_address="127.0.0.1", destination_port=port,
        sni=req.sni, context_extensions={"namespace": "shop"},
    )
    body, _, _ = core.check(msg.SerializeToString())
    resp = ext.CheckResponse.FromString(body)
    if resp.status.code == 0:
        return ALLOW
    challenge = [h.header.value for h in resp.denied_response.headers
                 if h.header.key.lower() == "www-authenticate"]
    if resp.denied_response.status.code == 401 and any("invalid_token" in c for c in challenge):
        return UNAUTHENTICATED  # the token failed verification
    return DENY  # 403, or 401 asking for a token that could help: a deny either way


def violations(
    oracle: Oracle, cases: list[Case] | None = None, *, first: bool = False, known: bool = False
) -> list[str]:
    """Every break of the relation, described (``first``: stop at the first case with one).
    ``known``: only the spellings extauthz refuses (``TOKEN_REFUSED``), else all others."""
    out: list[str] = []
    for case in cases if cases is not None else oracle.cases:
        if first and out:
            break
        try:
            core = _core(case)
        except PolicyError as exc:
            out.append(f"case {case.id}: extauthz refuses a policy Istio loads: {exc}")
            continue
        decide = functools.partial(extauthz_decides, core, port=oracle.port)
        for g in case.groups:
            want = oracle.envoy[(case.id, g.canonical)]
            got = decide(g.canonical)
            where = f"case {case.id} {case.action} {case.policy['spec']['rules']}"
            if known:
                pass
            elif want.startswith(REFUSED):
                out.append(f"{where}: Envoy refused the canonical request {g.canonical} ({want})")
            elif got != want and not (case.loose and got == DENY):
                out.append(f"{where}: canonical {g.canonical}: Envoy {want}, extauthz {got}")
            # a DENY's positive fields read every spelling: its denial holds for every variant
            every_spelling = case.action == "DENY" and not case.negated and not case.loose
            for v in g.variants:
                if (v.token_in in TOKEN_REFUSED) != known:
                    continue
                env, got_v = oracle.envoy[(case.id, v)], decide(v)
                if got_v == ALLOW and env != ALLOW:
                    out.append(f"{where}: variant {v}: extauthz allows, Envoy {env}")
                if every_spelling and want in (DENY, UNAUTHENTICATED) and got_v == ALLOW:
                    out.append(f"{where}: variant {v} of a request Envoy denies: extauthz allows")
    return out


def test_extauthz_decides_as_envoy_rbac(oracle: Oracle) -> None:
    policies, requests = oracle.size
    found = violations(oracle)
    refused = sum(o.startswith(REFUSED) for o in oracle.envoy.values())
    unauthenticated = sum(o == UNAUTHENTICATED for o in oracle.envoy.values())
    print(f"\ndifferential: {policies} policies, {requests} requests "
          f"({refused} refused by Envoy's codec before RBAC, {unauthenticated} by jwt_authn), "
          f"{len(found)} violations")
    assert not found, "\n".join(found[:40]) + f"\n... {len(found)} in all"


def test_token_spellings_envoy_does_not_read_are_refused(oracle: Oracle) -> None:
    """``Authorization: bearer <jwt>`` (lower-case scheme) and ``Authorization: <jwt>`` (none):
    the relation holds (it failed while extauthz read the first and ignored the second)."""
    found = violations(oracle, known=True)
    assert not found, "\n".join(found[:20]) + f"\n... {len(found)} in all"


def _negated(factory: matchers.Factory) -> matchers.Factory:
    def make(values: Sequence[str], wide: bool) -> Callable[[str], bool]:
        test = factory(values, wide)
        return lambda v: not test(v)

    return make


def _always(factory: matchers.Factory) -> matchers.Factory:
    return lambda values, wide: lambda v: True


@pytest.mark.parametrize("mutate", [_negated, _always], ids=["negated", "always"])
@pytest.mark.parametrize("family", sorted(matchers.FIELD_MATCHERS))
def test_a_broken_field_matcher_is_caught(
    oracle: Oracle, family: str, mutate: Callable[[matchers.Factory], matchers.Factory],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutation check: each field's compiled matcher, broken, breaks the relation."""
    cases = [c for c in oracle.cases if family in c.fields]
    assert cases, f"no case exercises {family}"
    monkeypatch.setitem(matchers.FIELD_MATCHERS, family, mutate(matchers.FIELD_MATCHERS[family]))
    assert violations(oracle, cases, first=True), f"a broken {family} matcher went unnoticed"


def test_every_field_the_loader_accepts_has_cases() -> None:
    accepted = {
        *authorization._SOURCE_FIELDS, *authorization._OPERATION_FIELDS, *authorization.WHEN_KEYS,
        "request.headers", "request.auth.claims",
    }
    written: set[str] = set()
    for case in all_cases(8443):
        for rule in case.policy["spec"]["rules"]:
            for part in (*(f["source"] for f in rule.get("from", [])),
                         *(t["operation"] for t in rule.get("to", []))):
                written.update(part)
            written.update(c["key"].partition("[")[0] for c in rule.get("when", []))
    missing = accepted - written
    assert not missing, f"fields the loader accepts without differential cases: {sorted(missing)}"
