"""``grpc``: checks/s of extauthz under h2load, next to no-op servers on the same transport.

    python bench/run.py grpc [--seconds 5] [--connections 4] [--streams 16]
                             [--transports grpcio,h2corn] [--workers 1] [--open-loop]
                             [--uncached]

h2load (Debian package nghttp2-client) sends a real gRPC unary call: a POST of a 5-byte-prefixed
CheckRequest (SPIFFE principal, ~10 headers, a ~600-byte bearer JWT) with
``content-type: application/grpc`` and ``te: trailers``. For each transport a no-op server
(same transport, fixed OK answer) gives the ceiling; extauthz then answers an allowed and a
denied request. ``per_core`` divides by the CPU the server actually used, so it does not depend
on how the 2 cores are shared with h2load. ``--open-loop`` adds one run per extauthz server at
50% of its measured maximum (h2load ``--rps``) for latency. The same request repeated is a
decision-cache hit after the first; ``--uncached`` adds the allowed request against a server
started with ``cache_size: 0`` (every check decided again).

Every extauthz server writes its audit log to a real file in a temporary directory and each row
reports ``checks``, ``records`` (decision records the log gained), ``lost`` and ``valid``
(bench/audit_count.py): a row with a lost record is not a result. ``--audit-log devnull`` runs
the same servers with ``--audit-log /dev/null`` (the ceiling without audit I/O).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    check_request_bytes,
    free_port,
    grpc_point,
    need,
    per_core,
    row,
    save,
    started,
)
from audit_count import AUDIT_COLUMNS, audit_file, audited_point

COLUMNS = [
    "name", "rps", "per_core", "ratio_to_noop", "p50_ms", "p99_ms", "failed", *AUDIT_COLUMNS, "us_per_req",
]


def noop_cmd(transport: str, port: int) -> list[str]:
    if transport == "grpcio":
        return [sys.executable, "bench/noop.py", "grpcio-sync", f"127.0.0.1:{port}", "4"]
    if transport == "h2corn":
        return [
            "h2corn",
            "--grpc",
            "--no-http1",
            "--no-access-log",
            "--runtime-threads",
            "1",
            "--lifespan",
            "off",
            "-b",
            f"127.0.0.1:{port}",
            "bench.noop:app",
        ]
    raise SystemExit(f"unknown transport {transport}")


def extauthz_cmd(
    transport: str,
    port: int,
    workers: int,
    policies: str,
    config: str | None = None,
    audit_log: Path | None = None,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "extauthz",
        "serve",
        *(["--config", config] if config else []),
        "--policies",
        policies,
        "--listen",
        f"127.0.0.1:{port}",
        "--audit-log",
        str(audit_log) if audit_log is not None else os.devnull,
        "--transport",
        transport,
        "--workers",
        str(workers),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--transports", default="grpcio,h2corn")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--policies", default="policies")
    p.add_argument("--open-loop", action="store_true", help="also run at 50%% of the maximum")
    p.add_argument(
        "--uncached",
        action="store_true",
        help="also run the allowed request against a server with the decision cache off",
    )
    p.add_argument(
        "--audit-log",
        choices=("file", "devnull"),
        default="file",
        help="file: a real file, records counted (default); devnull: /dev/null, nothing counted",
    )
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    kw: dict[str, Any] = {"conns": args.connections, "streams": args.streams}
    bodies = {"allow": check_request_bytes(allowed=True), "deny": check_request_bytes(allowed=False)}
    rows: list[dict[str, Any]] = []
    for transport in args.transports.split(","):
        port = free_port()
        with started(f"noop-{transport}", noop_cmd(transport, port), port=port) as proc:
            load, split = grpc_point({"server": proc.pid}, port, bodies["allow"], args.seconds, **kw)
        base = per_core(load, split)
        rows.append(row(f"noop-{transport}", load, split, per_core=base, ratio_to_noop=1.0))
        with audit_file(f"{transport}") as audit_path:
            audit = audit_path if args.audit_log == "file" else None
            port = free_port()
            cmd = extauthz_cmd(transport, port, args.workers, args.policies, audit_log=audit)
            with started(f"extauthz-{transport}", cmd, port=port) as proc:
                for kind, body in bodies.items():
                    load, split, acols = audited_point(
                        {"server": proc.pid}, port, body, args.seconds, audit, **kw
                    )
                    pc = per_core(load, split)
                    rows.append(
                        row(
                            f"extauthz-{transport}-{kind}",
                            load,
                            split,
                            per_core=pc,
                            ratio_to_noop=round(pc / base, 3) if base else 0.0,
                            **acols,
                        )
                    )
                    if args.open_loop and kind == "allow" and load.rps:
                        rate = load.rps / 2
                        ol, ol_split, acols = audited_point(
                            {"server": proc.pid}, port, body, args.seconds, audit, rate=rate, **kw
                        )
                        rows.append(
                            row(
                                f"extauthz-{transport}-allow@50%",
                                ol,
                                ol_split,
                                per_core=per_core(ol, ol_split),
                                target_rps=round(rate),
                                **acols,
                            )
                        )
        if args.uncached:
            with (
                tempfile.NamedTemporaryFile("w", suffix=".yaml") as config,
                audit_file(transport) as audit_path,
            ):
                audit = audit_path if args.audit_log == "file" else None
                config.write("cache_size: 0\n")
                config.flush()
                port = free_port()
                cmd = extauthz_cmd(transport, port, args.workers, args.policies, config.name, audit)
                with started(f"extauthz-{transport}-uncached", cmd, port=port) as proc:
                    load, split, acols = audited_point(
                        {"server": proc.pid}, port, bodies["allow"], args.seconds, audit, **kw
                    )
                pc = per_core(load, split)
                rows.append(
                    row(
                        f"extauthz-{transport}-allow-uncached",
                        load,
                        split,
                        per_core=pc,
                        ratio_to_noop=round(pc / base, 3) if base else 0.0,
                        **acols,
                    )
                )
        print(f"{transport}: done", file=sys.stderr)
    invalid = [r["name"] for r in rows if r.get("valid") is False]
    if invalid:
        print(f"INVALID rows (audit records lost or torn): {', '.join(invalid)}", file=sys.stderr)
    save(
        "grpc",
        rows,
        COLUMNS,
        meta={"args": vars(args), "cpus": os.cpu_count()},
        chart_value="per_core",
        chart_label="checks/s per server core",
        title="h2load -> gRPC Check (per core of the server)",
    )
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
