"""Fixtures for the decision-layer tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from decisions.support import Clock, fake_token_identity

from extauthz import check as check_mod


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def token_identity(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setattr(check_mod, "establish", fake_token_identity)
    return fake_token_identity
