"""``grpc``: checks/s of extauthz under h2load, as ratios to a no-op grpcio server of the same run.

    python bench/run.py grpc [--seconds 5] [--connections 16] [--streams 8] [--transports h2corn]
                             [--workers 1] [--open-loop] [--no-pin] [--no-tokens]
                             [--check [BASELINE]] [--write-baseline [BASELINE]]

Method (issue 14): the server under test is pinned to CPU 0 (``taskset -c 0``: everything it runs,
workers and audit writer, on that core), h2load (``-t1 -c16 -m8``) to CPU 1. Every request is a
realistic CheckRequest (SPIFFE principal, ~10 headers, a bearer JWT, ~1.4 KB) that differs from
every other in its request id, time and trace headers (bench/bodies.py), so no cache keyed on
raw bytes could answer it. Rows:

- ``noop-grpcio``: a grpcio sync server answering a fixed OK (the denominator of every ratio);
  ``noop-h2corn``: the same on h2corn (the transport's ceiling);
- ``cached allow`` / ``cached deny``: extauthz ``serve`` with its defaults, decision-cache hits;
- ``uncached mtls``: ``cache_size: 0``, the request without a token (mTLS peer only);
- ``uncached rs256``: ``cache_size: 0``, a RequestAuthentication with an RS256 JWKS and a policy
  reading the request principal; 16 tokens in turn (verification cached by the token validator);
- ``never-seen token``: the same policies, decision cache on, a token never sent before in every
  request (``--distinct-tokens`` of them are signed up front; the row says if any repeated);
- ``--open-loop``: extauthz's cached allow at 50% of its measured maximum (h2load ``--rps``),
  and the no-op on the same transport at the same rate: p99 against p99.

``ratio_to_noop`` = per-core checks/s over the no-op grpcio server's (checks/s x wall / server
CPU seconds: steady when the cores are shared with other jobs); ``ratio_rps`` = the same with
plain checks/s. Every extauthz server writes its audit log to a real file; ``records`` and
``lost`` say whether every check was recorded (a row with losses is not a result: exit 1).

``--check`` compares this run's ratios with a committed baseline (bench/baseline-grpc.json) and
exits 1 when one dropped by more than the baseline's ``tolerance`` (20%); ``--write-baseline``
writes this run's ratios as the new baseline.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    REPO,
    free_port,
    grpc_point,
    load_grpc,
    measure,
    need,
    per_core,
    pinned,
    row,
    save,
    set_pinning,
    started,
)
from audit_count import audit_columns, settled
from bodies import BodySet, body_set, shim_library
from tokens import TOKEN_PATH, Signer, token_policies

COLUMNS = [
    "name", "rps", "per_core", "ratio_to_noop", "ratio_rps", "p50_ms", "p99_ms", "failed",
    "records", "lost", "valid", "us_per_req",
]
BASELINE = REPO / "bench" / "baseline-grpc.json"
TOLERANCE = 0.20


def noop_cmd(transport: str, port: int) -> list[str]:
    if transport == "grpcio":
        return [sys.executable, "bench/noop.py", "grpcio-sync", f"127.0.0.1:{port}", "4"]
    if transport == "h2corn":
        return [
            "h2corn", "--grpc", "--no-http1", "--no-access-log", "--runtime-threads", "1",
            "--lifespan", "off", "-b", f"127.0.0.1:{port}", "bench.noop:app",
        ]
    raise SystemExit(f"unknown transport {transport}")


def extauthz_cmd(
    transport: str,
    port: int,
    workers: int,
    policies: str,
    config: str | None = None,
    audit_log: str = os.devnull,
) -> list[str]:
    return [
        sys.executable, "-m", "extauthz", "serve",
        *(["--config", config] if config else []),
        "--policies", policies,
        "--listen", f"127.0.0.1:{port}",
        "--audit-log", audit_log,
        "--transport", transport,
        "--workers", str(workers),
    ]


@contextmanager
def extauthz(name: str, transport: str, args: argparse.Namespace, *, policies: str | None = None,
             config: str = "", devnull: bool = False) -> Iterator[tuple[Any, Path]]:
    """A pinned extauthz server writing its audit log to a real file (``devnull``: to /dev/null,
    the ceiling without audit I/O, nothing counted): (process, log path)."""
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        log = Path(tmp) / "audit.jsonl"
        conf = Path(tmp) / "config.yaml"
        conf.write_text(config or "{}\n")
        port = free_port()
        cmd = extauthz_cmd(transport, port, args.workers, policies or args.policies, str(conf),
                           os.devnull if devnull else str(log))
        with started(name, pinned(cmd), port=port) as proc:
            proc.port = port  # type: ignore[attr-defined]
            yield proc, log


def audited(proc: Any, log: Path, run: Any) -> tuple[Any, dict[str, float], dict[str, Any]]:
    """``run()`` measured (it returns load, CPU split and the warm-up's answered checks), then the
    audit log counted once the writer settled (bench/audit_count.py)."""
    before = settled(log)
    load, split, warm_ok = run()
    return load, split, audit_columns(before, settled(log), load.ok + warm_ok)


def point(proc: Any, body: BodySet, seconds: float, warm_body: BodySet | None = None,
          **kw: Any) -> tuple[Any, dict[str, float], int]:
    warm: list[Any] = []
    load, split = measure(
        {"server": proc.pid},
        lambda: load_grpc(proc.port, body, seconds=seconds, warmup=0, **kw),
        warm=lambda: warm.append(load_grpc(proc.port, warm_body or body, seconds=1, warmup=0, **kw)),
    )
    return load, split, sum(w.ok for w in warm)


def build_summary() -> str:
    """``pure Python`` or ``compiled with mypyc: N modules`` (extauthz --version)."""
    from extauthz import compiled

    return compiled.summary()


def check_baseline(rows: list[dict[str, Any]], path: Path) -> int:
    """1 when a ratio of this run is more than the baseline's tolerance below the baseline's."""
    base = json.loads(path.read_text())
    tol = float(base.get("tolerance", TOLERANCE))
    built, now = base.get("build"), build_summary()
    if built and built != now:  # ratios of a pure run are ~25% below a compiled baseline's
        print(f"check: the baseline was measured {built}; this run is {now} (make compiled)",
              file=sys.stderr)
    got = {r["name"]: r.get("ratio_to_noop") for r in rows}
    bad = 0
    for name, want in base["ratios"].items():
        have = got.get(name)
        if not isinstance(have, int | float):
            print(f"check: {name}: not measured in this run", file=sys.stderr)
            continue
        floor = want * (1 - tol)
        verdict = "ok" if have >= floor else "REGRESSION"
        bad += verdict != "ok"
        print(f"check: {name}: {have:.2f}x the no-op (baseline {want:.2f}x, floor {floor:.2f}x): {verdict}")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--transports", default="h2corn", help="extauthz transports (grpcio,h2corn)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--policies", default="policies")
    p.add_argument("--open-loop", action="store_true", help="also run at 50%% of the maximum")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and h2load to CPUs 0 and 1")
    p.add_argument("--no-tokens", action="store_true", help="skip the RS256 and never-seen-token rows")
    p.add_argument("--devnull-ceiling", action="store_true",
                   help="add the cached allow with the audit log on /dev/null (file_vs_devnull)")
    p.add_argument("--uncached", action="store_true", help="(kept for old scripts: always on)")
    p.add_argument("--distinct-tokens", type=int, default=20000)
    p.add_argument("--check", nargs="?", const=str(BASELINE), help="compare with a baseline JSON")
    p.add_argument("--write-baseline", nargs="?", const=str(BASELINE))
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    set_pinning(not args.no_pin)
    varied = shim_library() is not None
    kw: dict[str, Any] = {"conns": args.connections, "streams": args.streams}
    allow = body_set("allow")
    deny = body_set("deny", path="/admin/users")
    mtls = body_set("mtls", tokens=(None,))
    rows: list[dict[str, Any]] = []
    base = 0.0
    base_rps = 0.0

    def add(name: str, load: Any, split: dict[str, float], acols: dict[str, Any] | None = None,
            ratio: bool = True, **more: Any) -> None:
        pc = per_core(load, split)
        if ratio:
            more["ratio_to_noop"] = round(pc / base, 3) if base else 0.0
            more["ratio_rps"] = round(load.rps / base_rps, 3) if base_rps else 0.0
        rows.append(row(name, load, split, per_core=pc, **(acols or {}), **more))

    port = free_port()
    with started("noop-grpcio", pinned(noop_cmd("grpcio", port)), port=port) as proc:
        load, split = grpc_point({"server": proc.pid}, port, allow, args.seconds, **kw)
    base, base_rps = per_core(load, split), load.rps
    add("noop-grpcio", load, split)

    for transport in args.transports.split(","):
        half: float | None = None
        with extauthz(f"extauthz-{transport}", transport, args) as (proc, log):
            for kind, bodies in (("allow", allow), ("deny", deny)):
                load, split, acols = audited(
                    proc, log, functools.partial(point, proc, bodies, args.seconds, **kw)
                )
                add(f"extauthz-{transport} cached {kind}", load, split, acols)
                if args.open_loop and kind == "allow" and load.rps:
                    half = load.rps / 2
                    ol, ol_split, acols = audited(
                        proc, log, functools.partial(point, proc, allow, args.seconds, rate=half, **kw)
                    )
                    add(f"extauthz-{transport} cached allow @50%", ol, ol_split, acols, ratio=False,
                        target_rps=round(half))
        if args.devnull_ceiling:  # issue 16: the file's checks/s against the same server on /dev/null
            with extauthz(f"extauthz-{transport}-devnull", transport, args, devnull=True) as (proc, _):
                load, split, _warm = point(proc, allow, args.seconds, **kw)
            add(f"extauthz-{transport} cached allow, audit to /dev/null", load, split)
            filed = next(r for r in rows if r["name"] == f"extauthz-{transport} cached allow")
            rows[-1]["file_vs_devnull"] = round(filed["rps"] / load.rps, 3) if load.rps else 0.0
        port = free_port()
        with started(f"noop-{transport}", pinned(noop_cmd(transport, port)), port=port) as proc:
            load, split = grpc_point({"server": proc.pid}, port, allow, args.seconds, **kw)
            add(f"noop-{transport}", load, split)
            if half:
                ol, ol_split = grpc_point({"server": proc.pid}, port, allow, args.seconds, rate=half, **kw)
                add(f"noop-{transport} @ same rate", ol, ol_split, ratio=False, target_rps=round(half))
        with extauthz(f"extauthz-{transport}-uncached", transport, args, config="cache_size: 0\n") as (
            proc, log,
        ):
            load, split, acols = audited(proc, log, functools.partial(point, proc, mtls, args.seconds, **kw))
            add(f"extauthz-{transport} uncached mtls", load, split, acols)
        if args.no_tokens:
            continue
        signer = Signer()
        with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
            policies = str(token_policies(Path(tmp) / "policies", signer))
            rs256 = body_set("rs256", path=TOKEN_PATH, tokens=signer.tokens(16))
            with extauthz(f"extauthz-{transport}-rs256", transport, args, policies=policies,
                          config="cache_size: 0\n") as (proc, log):
                load, split, acols = audited(
                    proc, log, functools.partial(point, proc, rs256, args.seconds, **kw)
                )
                add(f"extauthz-{transport} uncached rs256", load, split, acols)
            print(f"signing {args.distinct_tokens} tokens...", file=sys.stderr)
            fresh = body_set("fresh", args.distinct_tokens, path=TOKEN_PATH,
                             tokens=signer.tokens(args.distinct_tokens, start=1000))
            with extauthz(f"extauthz-{transport}-fresh", transport, args, policies=policies) as (proc, log):
                load, split, acols = audited(
                    proc, log, functools.partial(point, proc, fresh, args.seconds, warm_body=rs256, **kw)
                )
                sent = load.ok + load.failed if load.failed >= 0 else load.ok
                add(f"extauthz-{transport} never-seen token", load, split, acols,
                    repeated_tokens=max(0, sent - args.distinct_tokens) if varied else "all")
        print(f"{transport}: done", file=sys.stderr)
    save(
        "grpc",
        rows,
        COLUMNS,
        meta={"args": vars(args), "cpus": os.cpu_count(), "pinned": bool(pinned(["x"]) != ["x"]),
              "varied_bodies": varied, "body_bytes": len(allow.first)},
        chart_value="per_core",
        chart_label="checks/s per server core",
        title="h2load -> gRPC Check (per core of the server)",
    )
    invalid = [r["name"] for r in rows if r.get("lost") or r.get("valid") is False]
    if invalid:
        print(f"INVALID rows (audit records lost): {', '.join(invalid)}", file=sys.stderr)
    code = 1 if invalid else 0
    if args.write_baseline:
        ratios = {r["name"]: r["ratio_to_noop"] for r in rows
                  if r["name"].startswith("extauthz") and isinstance(r.get("ratio_to_noop"), float)}
        Path(args.write_baseline).write_text(
            json.dumps({"tolerance": TOLERANCE, "ratios": ratios, "build": build_summary(),
                        "method": "bench/run.py grpc: ratio of per-core checks/s to noop-grpcio, same run"},
                       indent=2) + "\n"
        )
        print(f"baseline written: {args.write_baseline}")
    if args.check:
        code = max(code, check_baseline(rows, Path(args.check)))
    return code


if __name__ == "__main__":
    sys.exit(main())
