"""The bench helpers that turn h2load output into figures (no load is generated here)."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common_under_test", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_percentiles() -> None:
    c = _common()
    p50, p99, mean = c.percentiles(list(range(1, 1001)))  # microseconds
    assert (p50, p99) == (0.501, 0.991)
    assert abs(mean - 0.5005) < 1e-9
    assert c.percentiles([]) == (0.0, 0.0, 0.0)


def test_realistic_request() -> None:
    c = _common()
    msg = ext.CheckRequest.FromString(c.check_request_bytes())
    http = msg.attributes.request.http
    assert msg.attributes.source.principal.startswith("spiffe://")
    assert len([h for h in http.headers if not h.startswith(":")]) >= 9
    token = http.headers["authorization"].removeprefix("Bearer ")
    assert 550 <= len(token) <= 700 and token.count(".") == 2
    assert http.path == "/api/items"
    assert (
        ext.CheckRequest.FromString(c.check_request_bytes(allowed=False)).attributes.request.http.path
        != "/api/items"
    )
    framed = c.grpc_frame(b"abc")
    assert framed == b"\x00\x00\x00\x00\x03abc"


def test_row_cost_per_request_and_table() -> None:
    c = _common()
    load = c.Load(rps=1000.0, ok=5000, failed=0, p50_ms=1.0, p99_ms=2.0, mean_ms=1.1)
    r = c.row("x", load, {"server": 0.5, "load": 0.1, "wall": 5.0})
    assert r["us_per_req"] == {"server": 100.0, "load": 20.0}
    assert c.per_core(load, {"server": 2.5, "wall": 5.0}) == 2000.0
    text = c.table([r], ["name", "rps", "p99_ms"])
    assert text.splitlines()[1].split() == ["x", "1000", "2.00"]


def _bench_commands() -> list[str]:
    tree = ast.parse((BENCH / "run.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "COMMANDS" for t in node.targets
        ):
            return sorted(ast.literal_eval(node.value))
    raise AssertionError("bench/run.py has no COMMANDS")


@pytest.mark.parametrize("command", _bench_commands())
def test_every_bench_command_imports_and_explains_itself(command: str) -> None:
    """Every benchmark loads (an import broken by a change elsewhere in bench/ shows here, not on
    the day someone runs `make bench-envoy`) and prints its options."""
    done = subprocess.run(
        [sys.executable, "bench/run.py", command, "--help"],
        cwd=BENCH.parent, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
