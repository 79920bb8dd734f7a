"""An explicitly empty field list (``paths: []``) is no constraint at all, so a source or
operation made only of empty lists would match anything: refused at load, as Istio refuses an
empty operation (review finding: an ALLOW edited down to ``paths: []`` allowed every request)."""

from __future__ import annotations

import pytest

from extauthz.decision.decision import decide
from extauthz.envoy.request import from_check_request
from extauthz.policy import PolicyError, compile_policies, load_text
from extauthz.tools.samples import check_request


def _allow(rule: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: a, namespace: shop}}
spec:
  action: ALLOW
  rules:
  - {rule}
"""


@pytest.mark.parametrize(
    "rule",
    [
        "to: [{operation: {paths: []}}]",
        "to: [{operation: {paths: [], notMethods: []}}]",
        "from: [{source: {principals: []}}]",
        "from: [{source: {namespaces: [], ipBlocks: []}}]",
    ],
)
def test_source_or_operation_of_only_empty_lists_is_refused(rule: str) -> None:
    with pytest.raises(PolicyError, match="must not be empty"):
        load_text(_allow(rule))


def test_an_empty_list_next_to_a_real_one_constrains_nothing_more() -> None:
    engine = compile_policies(load_text(_allow('to: [{operation: {paths: [], methods: ["POST"]}}]')))
    assert not decide(engine, from_check_request(check_request(method="GET"))).allowed
    assert decide(engine, from_check_request(check_request(method="POST"))).allowed
