"""Measure what deploy/kubernetes/deployment.yaml's resources are sized from (seconds, loopback).

    python deploy/measure.py [--seconds 5] [--connections 4] [--streams 16]

Starts ``extauthz serve`` on the example policies (audit records to /dev/null), reads its RSS
idle, drives it with h2load (real gRPC unary Check calls: the bench's request and h2load run,
from bench/_common.py) and reads the CPU time the server
used (utime+stime from /proc) and its peak RSS (VmHWM). Prints JSON: checks/s, CPU-ms per
1000 checks, idle and peak RSS in MiB. One process, one run: figures are for sizing, not a
benchmark (see bench/ for that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
BENCH_COMMON = REPO / "bench" / "_common.py"


def bench_common() -> ModuleType:
    """bench/_common.py, loaded by path (bench/ is scripts, not a package): processes, the
    bench's CheckRequest, h2load runs."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCH_COMMON)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=5, help="h2load run (default 5)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    args = p.parse_args(argv)
    bench = bench_common()
    bench.need("h2load", "nghttp2-client")
    port = bench.free_port()
    cmd = [sys.executable, "-m", "extauthz", "serve", "--policies", str(REPO / "policies"),
           "--listen", f"127.0.0.1:{port}", "--audit-log", os.devnull, "--log-level", "warning"]
    with bench.started("extauthz", cmd, port=port) as proc:
        time.sleep(1.0)
        idle = _status(proc.pid)
        cpu0 = bench.cpu_seconds(proc.pid)
        load = bench.load_grpc(
            port, bench.check_request_bytes(), seconds=args.seconds, conns=args.connections,
            streams=args.streams, warmup=0,
        )
        cpu = bench.cpu_seconds(proc.pid) - cpu0
        peak = _status(proc.pid)
    n = sum(load.extra.get("statuses", {}).values())  # calls answered (h2load's log)
    result = {
        "checks": n,
        "checks_per_s": round(load.rps, 1),
        "failed": load.failed,
        "server_cpu_s": round(cpu, 2),
        "cpu_ms_per_1000_checks": round(1000 * cpu / n * 1000, 1) if n else None,
        "rss_idle_mib": round(idle["VmRSS"] / 1024, 1),
        "rss_peak_mib": round(peak["VmHWM"] / 1024, 1),
        "args": vars(args),
    }
    print(json.dumps(result, indent=2))
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
