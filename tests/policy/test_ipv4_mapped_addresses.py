"""An IPv4 client written as an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, as a dual-stack
proxy writes it into x-forwarded-for) is the same client: ipBlocks on IPv4 CIDRs match it
(review finding: the mapped spelling dodged DENY remoteIpBlocks/ipBlocks)."""

from __future__ import annotations

import pytest
from helpers.policy import engine, evaluate

from .test_deny_spellings import policy


@pytest.mark.parametrize(
    ("rule", "req"),
    [
        ("{from: [{source: {remoteIpBlocks: [1.2.3.0/24]}}]}",
         {"headers": {"x-forwarded-for": "::ffff:1.2.3.4"}}),
        ("{from: [{source: {ipBlocks: [1.2.3.0/24]}}]}", {"source_address": "::ffff:1.2.3.4"}),
        ("{when: [{key: remote.ip, values: [1.2.3.4]}]}",
         {"headers": {"x-forwarded-for": "::FFFF:1.2.3.4"}}),
    ],
)
def test_deny_on_ipv4_block_catches_the_mapped_spelling(rule: str, req: dict[str, object]) -> None:
    eng = engine(policy("DENY", rule), xff_num_trusted_hops=1)
    assert not evaluate(eng, **req).allowed  # type: ignore[arg-type]
    other = {"headers": {"x-forwarded-for": "::ffff:5.6.7.8"}, "source_address": "::ffff:5.6.7.8"}
    assert evaluate(eng, **other).allowed  # type: ignore[arg-type]


def test_ipv6_block_of_mapped_addresses_still_matches_them() -> None:
    eng = engine(policy("DENY", "{from: [{source: {ipBlocks: ['::ffff:1.2.3.0/120']}}]}"))
    assert not evaluate(eng, source_address="::ffff:1.2.3.4").allowed
