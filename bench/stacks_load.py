"""``stacks``: how the gRPC stack was chosen (grpcio sync vs grpc.aio, thread counts, and ASGI
servers with gRPC support: h2corn, pyvoy, granian, hypercorn) for the same no-op Check, plus
extauthz itself on the grpcio variants.

    python bench/run.py stacks [--seconds 5] [--only h2corn,grpcio]

Servers that are not installed (or fail to start) are reported, not fatal.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import check_request_bytes, free_port, grpc_point, need, per_core, row, save, started, which

COLUMNS = ["name", "rps", "per_core", "p50_ms", "p99_ms", "failed", "us_per_req"]
PY = sys.executable


def cases() -> list[tuple[str, list[str]]]:
    def ext(threads: str) -> list[str]:
        return [
            PY,
            "-m",
            "extauthz",
            "serve",
            "--policies",
            "policies",
            "--listen",
            "127.0.0.1:{p}",
            "--audit-log",
            os.devnull,
            "--transport",
            "grpcio",
            "--threads",
            threads,
        ]

    return [
        ("noop grpcio-sync t16", [PY, "bench/noop.py", "grpcio-sync", "127.0.0.1:{p}", "16"]),
        ("noop grpcio-sync t4", [PY, "bench/noop.py", "grpcio-sync", "127.0.0.1:{p}", "4"]),
        ("noop grpcio-sync t1", [PY, "bench/noop.py", "grpcio-sync", "127.0.0.1:{p}", "1"]),
        ("noop grpcio-aio", [PY, "bench/noop.py", "grpcio-aio", "127.0.0.1:{p}"]),
        ("extauthz grpcio-sync t16", ext("16")),
        ("extauthz grpcio-sync t4", ext("4")),
        ("extauthz grpcio-sync t1", ext("1")),
        ("extauthz grpcio-aio", [PY, "bench/extauthz_aio.py", "aio", "127.0.0.1:{p}", "policies"]),
        (
            "noop h2corn",
            [
                "h2corn",
                "--grpc",
                "--no-http1",
                "--no-access-log",
                "--runtime-threads",
                "1",
                "--lifespan",
                "off",
                "-b",
                "127.0.0.1:{p}",
                "bench.noop:app",
            ],
        ),
        (
            "noop pyvoy",
            ["pyvoy", "--address", "127.0.0.1", "--port", "{p}", "--worker-threads", "1", "bench.noop:app"],
        ),
        (
            "noop granian",
            [
                "granian",
                "--interface",
                "asgi",
                "--http",
                "2",
                "--log-level",
                "warning",
                "--host",
                "127.0.0.1",
                "--port",
                "{p}",
                "bench.noop:app",
            ],
        ),
        ("noop hypercorn", ["hypercorn", "-b", "127.0.0.1:{p}", "bench.noop:app"]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--only", default="", help="comma-separated substrings of the names to run")
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    body = check_request_bytes()
    rows: list[dict[str, Any]] = []
    for name, template in cases():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        if template[0] != PY and not which(template[0]):
            print(f"{name}: {template[0]} not installed, skipped", file=sys.stderr)
            continue
        port = free_port()
        cmd = [c.replace("{p}", str(port)) for c in template]
        try:
            with started(name, cmd, port=port) as proc:
                load, split = grpc_point({"server": proc.pid}, port, body, args.seconds)
        except Exception as exc:  # a candidate that does not start is a result too
            print(f"{name}: failed: {exc}", file=sys.stderr)
            rows.append({"name": name, "error": str(exc)[:200]})
            continue
        rows.append(row(name, load, split, per_core=per_core(load, split)))
        print(f"{name}: {load.rps:.0f}", file=sys.stderr)
    save(
        "stacks",
        rows,
        COLUMNS,
        meta={"args": vars(args), "cpus": os.cpu_count()},
        chart_value="per_core",
        chart_label="checks/s per server core",
        title="gRPC stacks (no-op Check)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
