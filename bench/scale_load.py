"""``scale``: checks/s of ``extauthz serve --workers N`` for N = 1, 2, ...

    python bench/run.py scale [--workers 1,2] [--seconds 5] [--transport h2corn]

Worker ``i`` listens on PORT+i; one h2load per worker runs in parallel (h2load cannot spread
over several ports itself) and the table sums them. ``per_core`` divides by the CPU the workers
actually used, so the scaling of the work is visible even when h2load and other tenants take
part of the cores; ``speedup`` compares checks/s with the 1-worker row of the same invocation.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Load,
    check_request_bytes,
    load_grpc,
    measure,
    need,
    per_core,
    row,
    save,
    started,
    wait_port,
)

from extauthz.settings import worker_addresses

COLUMNS = ["name", "rps", "per_core", "speedup", "p50_ms", "p99_ms", "failed", "us_per_req"]


def consecutive_ports(n: int) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no consecutive free ports")


def parallel(ports: list[int], body: bytes, seconds: float, rate: float | None, kw: dict[str, Any]) -> Load:
    with ThreadPoolExecutor(len(ports)) as pool:
        loads = list(
            pool.map(
                lambda p: load_grpc(
                    p, body, seconds=seconds, warmup=0, rate=rate / len(ports) if rate else None, **kw
                ),
                ports,
            )
        )
    total = Load(
        rps=sum(x.rps for x in loads), ok=sum(x.ok for x in loads), failed=sum(x.failed for x in loads)
    )
    # Percentiles: the worst worker's (a conservative merge without the raw samples).
    total.p50_ms = max(x.p50_ms for x in loads)
    total.p99_ms = max(x.p99_ms for x in loads)
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, default=2, help="per worker")
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--transport", default="h2corn")
    p.add_argument("--policies", default="policies")
    p.add_argument("--open-loop", action="store_true", help="also run at 50%% of each maximum")
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    body = check_request_bytes()
    kw = {"conns": args.connections, "streams": args.streams}
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in args.workers.split(",")):
        base = consecutive_ports(n)
        ports = [int(a.rpartition(":")[2]) for a in worker_addresses(f"127.0.0.1:{base}", n)]
        cmd = [
            sys.executable,
            "-m",
            "extauthz",
            "serve",
            "--policies",
            args.policies,
            "--listen",
            f"127.0.0.1:{base}",
            "--audit-log",
            os.devnull,
            "--transport",
            args.transport,
            "--workers",
            str(n),
        ]
        with started(f"workers-{n}", cmd, port=ports[-1]) as proc:
            for port in ports[:-1]:
                wait_port(port)
            load, split = measure(
                {"server": proc.pid},
                lambda ports=ports: parallel(ports, body, args.seconds, None, kw),
                warm=lambda ports=ports: parallel(ports, body, 1, None, kw),
            )
            rows.append(row(f"{args.transport} x{n}", load, split, per_core=per_core(load, split), workers=n))
            if args.open_loop and load.rps:
                ol, ol_split = measure(
                    {"server": proc.pid},
                    lambda ports=ports, rate=load.rps / 2: parallel(ports, body, args.seconds, rate, kw),
                )
                rows.append(
                    row(
                        f"{args.transport} x{n} @50%",
                        ol,
                        ol_split,
                        per_core=per_core(ol, ol_split),
                        workers=n,
                        target_rps=round(load.rps / 2),
                    )
                )
        print(f"{n} workers: {load.rps:.0f} checks/s", file=sys.stderr)
    one = next((r["rps"] for r in rows if r.get("workers") == 1 and "@" not in r["name"]), 0.0)
    for r in rows:
        r["speedup"] = round(r["rps"] / one, 2) if one and "@" not in r["name"] else ""
    save(
        "scale",
        rows,
        COLUMNS,
        meta={"args": vars(args), "cpus": os.cpu_count()},
        chart_label="checks/s (all workers)",
        title=f"extauthz --workers N ({args.transport})",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
