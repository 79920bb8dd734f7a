"""Fixtures of the attack catalogue (helpers live in ``tests/helpers/attacks.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest
from helpers import DevPki, EchoServer
from helpers.attacks import EnvoyStack, start_envoy_stack


@pytest.fixture(scope="module")
def envoy_stack_factory(
    tmp_path_factory: pytest.TempPathFactory, pki: DevPki, echo_server: EchoServer
) -> Iterator[Callable[[Mapping[str, str]], EnvoyStack]]:
    """``make({file: yaml})`` -> a running stack for this module, stopped at module teardown."""
    stacks: list[EnvoyStack] = []

    def make(policies: Mapping[str, str]) -> EnvoyStack:
        stack = start_envoy_stack(tmp_path_factory.mktemp("adv"), pki, echo_server, policies)
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        s.envoy.stop()
        s.authz.stop()
