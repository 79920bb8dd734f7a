"""Shared fixtures; the machinery lives in ``tests/helpers``."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Make ``extauthz`` (repo root) and ``helpers`` (this directory) importable under plain pytest,
# whatever the import mode.
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from helpers import (  # noqa: E402
    DevPki,
    EchoServer,
    EnvoyProcess,
    ExtauthzProcess,
    build_pki,
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A compiled module not built from its current source would run the old code in place of
    the edited one (``make compiled``): refuse to test that build."""
    from extauthz import compiled

    stale = compiled.stale_modules()
    if stale:
        pytest.exit(
            f"compiled modules not built from their current source ({', '.join(stale)}): "
            "run `make compiled` again, or `make pure`",
            returncode=2,
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """CA, SVIDs (``frontend``, ``api``, ``intruder``) and Envoy's server cert, as PEM files."""
    return build_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def echo_server() -> Iterator[EchoServer]:
    """The upstream echo server (shared: call ``.clear()`` before asserting on ``.requests``)."""
    with EchoServer() as server:
        yield server


@pytest.fixture
def extauthz_factory(tmp_path: Path) -> Iterator[Callable[..., ExtauthzProcess]]:
    """``make(policy_dir, **kwargs)`` -> a started ExtauthzProcess, stopped at teardown."""
    started: list[ExtauthzProcess] = []

    def make(policy_dir: Path, **kwargs: Any) -> ExtauthzProcess:
        proc = ExtauthzProcess(policy_dir, tmp_path / f"extauthz-{len(started)}", **kwargs)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def envoy_factory(
    tmp_path: Path, pki: DevPki, echo_server: EchoServer
) -> Iterator[Callable[..., EnvoyProcess]]:
    """``make(authz_endpoints, **kwargs)`` -> a started EnvoyProcess (mTLS, echo upstream)."""
    started: list[EnvoyProcess] = []

    def make(authz_endpoints: list[str], **kwargs: Any) -> EnvoyProcess:
        kwargs.setdefault("upstream", echo_server.address)
        kwargs.setdefault("tls", pki.envoy_tls())
        proc = EnvoyProcess(tmp_path / f"envoy-{len(started)}", authz_endpoints=authz_endpoints, **kwargs)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()
