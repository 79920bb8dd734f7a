"""Anomaly response: quarantine after too many denials, distinct reason, audit, metric, release."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from helpers.decisions import POLICY, Clock
from prometheus_client import generate_latest

from extauthz.decision.audit import AuditLog, StreamSink
from extauthz.decision.cache import DecisionCache
from extauthz.decision.decision import Decision
from extauthz.decision.quarantine import Quarantine
from extauthz.identity.resolver import IdentityContext
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy import compile_policies, load_text
from extauthz.tools.samples import check_request

ENGINE = compile_policies(load_text(POLICY))
OK = {"headers": {"x-tenant": "acme"}}
BAD = {"path": "/api/admin", "headers": {"x-tenant": "acme"}}
OTHER = {"principal": "spiffe://example.org/ns/shop/sa/frontend2"}


class Rig:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.q = Quarantine(max_denies=3, window=10, duration=60, clock=clock)
        self.sink = StreamSink(io.StringIO())
        self.audit = AuditLog(self.sink)
        self.metrics = Metrics()
        self.metrics.watch_quarantine(self.q)
        self.core = CheckCore(
            lambda: ENGINE,
            cache=DecisionCache(clock=clock),
            quarantine=self.q,
            audit=self.audit,
            metrics=self.metrics,
        )

    def run(self, **kw: Any) -> Decision:
        return self.core.check(check_request(**kw).SerializeToString())[2]

    def records(self) -> list[dict[str, Any]]:
        self.audit.close()
        out = self.sink.stream.getvalue()  # type: ignore[attr-defined]
        return [json.loads(x) for x in out.splitlines()]


@pytest.fixture
def rig(clock: Clock) -> Rig:
    return Rig(clock)


def test_quarantine_after_too_many_denials_then_release(rig: Rig) -> None:
    assert rig.run(**OK).allowed
    for _ in range(3):
        assert rig.run(**BAD).reason == "denied_by_policy"
    assert rig.run(**OK).allowed  # 3 denials: not more than the limit yet
    assert rig.run(**BAD).reason == "denied_by_policy"  # the 4th: quarantined from now on
    d = rig.run(**OK)
    assert not d.allowed and d.reason == "quarantined" and d.status == 403
    assert rig.run(**OTHER).reason == "no_matching_policy"  # others are unaffected
    rig.clock.now += 59
    assert rig.run(**OK).reason == "quarantined"  # cached allows do not bypass it
    rig.clock.now += 2
    assert rig.run(**OK).allowed  # released automatically
    text = generate_latest(rig.metrics.registry).decode()
    assert "extauthz_quarantines_total 1.0" in text
    events = [r for r in rig.records() if "event" in r]
    assert [e["event"] for e in events] == ["quarantine_start", "quarantine_end"]
    assert events[0]["source"] == {"principal": "spiffe://example.org/ns/shop/sa/frontend"}
    assert events[0]["denials"] == 4


def test_slow_denials_do_not_quarantine(rig: Rig) -> None:
    for _ in range(10):
        assert rig.run(**BAD).reason == "denied_by_policy"
        rig.clock.now += 4  # 4 denials never fall within 10 seconds
    assert rig.run(**OK).allowed


def test_quarantine_answers_do_not_extend_it(rig: Rig) -> None:
    for _ in range(4):
        rig.run(**BAD)
    for _ in range(20):
        assert rig.run(**OK).reason == "quarantined"
    rig.clock.now += 61
    assert rig.run(**OK).allowed


def test_callers_without_a_principal_are_tracked_by_address(rig: Rig) -> None:
    anon = {"principal": "", "source_address": "192.0.2.7"}
    for _ in range(4):
        assert not rig.run(**anon).allowed
    assert rig.run(**anon).reason == "quarantined"
    assert rig.run(principal="", source_address="192.0.2.8").reason == "no_matching_policy"


def test_off_by_default() -> None:
    core = CheckCore(lambda: ENGINE)
    for _ in range(50):
        assert core.check(check_request(**BAD).SerializeToString())[2].reason == "denied_by_policy"


def test_tracking_memory_is_bounded(clock: Clock) -> None:
    q = Quarantine(max_denies=2, window=10, duration=60, max_tracked=5, clock=clock)
    for i in range(100):
        q.record_deny(("address", f"10.0.0.{i}"))
    assert len(q._denies) == 5


def test_behind_a_trusted_proxy_the_client_is_quarantined_not_the_proxy(clock: Clock) -> None:
    """Two clients behind one trusted proxy (10.0.0.0/24, it sends x-forwarded-client-cert):
    the noisy one is quarantined, the other is still allowed. The quarantine was keyed on the
    direct peer (the proxy), which put every client behind it in quarantine (issue 13)."""
    q = Quarantine(max_denies=3, window=10, duration=60, clock=clock)
    core = CheckCore(
        lambda: ENGINE, identity=IdentityContext(trusted_proxies=["10.0.0.0/24"]), quarantine=q
    )
    proxy = {"principal": "spiffe://example.org/ns/edge/sa/gateway", "source_address": "10.0.0.5"}

    def via_proxy(client: str, path: str) -> Decision:
        headers = {"x-tenant": "acme", "x-forwarded-client-cert": f"By={proxy['principal']};URI={client}"}
        return core.check(check_request(path=path, headers=headers, **proxy).SerializeToString())[2]

    noisy = "spiffe://example.org/ns/shop/sa/noisy"
    good = "spiffe://example.org/ns/shop/sa/frontend"
    for _ in range(4):
        assert via_proxy(noisy, "/api/admin").reason == "denied_by_policy"
    assert via_proxy(noisy, "/api/items").reason == "quarantined"
    ok = via_proxy(good, "/api/items")
    assert ok.allowed, ok
    assert ok.identity.principal == "example.org/ns/shop/sa/frontend"
    # A peer that is not a trusted proxy cannot pick its quarantine key with the header.
    direct = check_request(
        path="/api/items",
        headers={"x-tenant": "acme", "x-forwarded-client-cert": f"URI={good}"},
        principal=noisy,
        source_address="192.0.2.9",
    )
    assert core.check(direct.SerializeToString())[2].reason == "quarantined"
