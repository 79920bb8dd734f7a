"""Measure what deploy/kubernetes/deployment.yaml's resources are sized from (seconds, loopback).

    python deploy/measure.py [--seconds 5] [--connections 4] [--streams 16]

Starts ``extauthz serve`` on the example policies (audit records to /dev/null), reads its RSS
idle, drives it with h2load (real gRPC unary Check calls) and reads the CPU time the server
used (utime+stime from /proc) and its peak RSS (VmHWM). Prints JSON: checks/s, CPU-ms per
1000 checks, idle and peak RSS in MiB. One process, one run: figures are for sizing, not a
benchmark (see bench/ for that).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _bench() -> Any:
    """bench/grpc.py (loaded by path: its module name would shadow the grpc package)."""
    spec = importlib.util.spec_from_file_location("bench_grpc", REPO / "bench" / "grpc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    args = p.parse_args()
    bench = _bench()
    port = bench.free_port()
    cmd = [sys.executable, "-m", "extauthz", "serve", "--policies", str(REPO / "policies"),
           "--listen", f"127.0.0.1:{port}", "--audit-log", os.devnull, "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        bench.wait_port(port)
        time.sleep(1.0)
        idle = _status(proc.pid)
        with tempfile.TemporaryDirectory() as tmp:
            body = Path(tmp) / "check.bin"
            body.write_bytes(bench.request_body())
            cpu0 = _cpu_seconds(proc.pid)
            out = subprocess.run(
                ["h2load", "-D", str(args.seconds), "-t", "1", "-c", str(args.connections),
                 "-m", str(args.streams), "-d", str(body), "-H", "content-type: application/grpc",
                 "-H", "te: trailers", f"http://127.0.0.1:{port}{bench.CHECK_PATH}"],
                capture_output=True, text=True, timeout=args.seconds + 60,
            ).stdout
            cpu = _cpu_seconds(proc.pid) - cpu0
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
        rps = re.search(r"finished in .*?, ([\d.]+) req/s", out)
        n = int(done.group(1)) if done else 0
        peak = _status(proc.pid)
        result = {
            "checks": n,
            "checks_per_s": float(rps.group(1)) if rps else 0.0,
            "server_cpu_s": round(cpu, 2),
            "cpu_ms_per_1000_checks": round(1000 * cpu / n * 1000, 1) if n else None,
            "rss_idle_mib": round(idle["VmRSS"] / 1024, 1),
            "rss_peak_mib": round(peak["VmHWM"] / 1024, 1),
            "args": vars(args),
        }
        print(json.dumps(result, indent=2))
    finally:
        proc.terminate()
        proc.wait(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
