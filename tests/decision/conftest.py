"""Fixtures for the decision-layer tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers.decisions import Clock, fake_resolver, fake_token_identity

from extauthz.identity.resolver import IdentityContext


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def token_identity(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setattr(IdentityContext, "resolver", fake_resolver)
    return fake_token_identity
