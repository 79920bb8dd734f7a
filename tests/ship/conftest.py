"""Helpers for the shipping tests (image, manifests, docs, Envoy config generator)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def repo() -> Path:
    return REPO


def yaml_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document of ``path``."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def check_once(target: str, request: Any, timeout: float = 5.0) -> Any:
    """One Authorization/Check call over gRPC; returns the decoded CheckResponse."""
    import grpc

    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/envoy.service.auth.v3.Authorization/Check",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ext.CheckResponse.FromString,
        )
        return call(request, timeout=timeout)


@pytest.fixture
def grpc_check() -> Iterator[Callable[..., Any]]:
    yield check_once
