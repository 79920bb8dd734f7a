"""Checks/s of ``extauthz serve`` under h2load, next to a no-op grpcio server, in one run.

    python bench/grpc.py [--seconds 10] [--connections 4] [--streams 16]

h2load (Debian package nghttp2-client) sends a real gRPC unary call: a POST of a 5-byte-prefixed
CheckRequest with ``content-type: application/grpc`` and ``te: trailers``. Both servers run as
one process with the same grpcio settings; the no-op one answers a fixed OK CheckResponse, so
the ratio is the cost of extauthz's own work on top of grpcio's Python layer.
Results: a table on stdout and JSON in bench/results/grpc.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"

NOOP_SERVER = r"""
import sys
from concurrent.futures import ThreadPoolExecutor
import grpc
from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
resp = ext.CheckResponse()
resp.status.code = 0
body = resp.SerializeToString()
def check(data, ctx):
    return body
server = grpc.server(ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "envoy.service.auth.v3.Authorization",
    {"Check": grpc.unary_unary_rpc_method_handler(check)}),))
server.add_insecure_port(sys.argv[1])
server.start()
server.wait_for_termination()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def request_body() -> bytes:
    from extauthz.samples import check_request

    msg = check_request(
        headers={
            "user-agent": "bench/1.0",
            "accept": "application/json",
            "x-request-id": "",
            "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
            "content-type": "application/json",
            "accept-encoding": "gzip",
        },
        certificate="",
    ).SerializeToString()
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def h2load(port: int, body: Path, seconds: float, conns: int, streams: int) -> dict[str, Any]:
    cmd = [
        "h2load", "-D", str(seconds), "--warm-up-time", "1", "-t", "1",
        "-c", str(conns), "-m", str(streams), "-d", str(body),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{CHECK_PATH}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"finished in .*?, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    lat = re.search(r"time for request:\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)\s+([\d.]+)(\w+)", out)
    failed = re.search(r"(\d+) failed", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "ok_2xx": int(status.group(1)) if status else 0,
        "failed": int(failed.group(1)) if failed else -1,
        "mean_latency": f"{lat.group(5)}{lat.group(6)}" if lat else "?",
    }


def run(name: str, cmd: list[str], port: int, body: Path, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        wait_port(port)
        time.sleep(0.5)
        res = h2load(port, body, args.seconds, args.connections, args.streams)
    finally:
        proc.terminate()
        proc.wait(15)
    res["name"] = name
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    args = p.parse_args()
    if not shutil.which("h2load"):
        print("h2load is missing: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "check.bin"
        body.write_bytes(request_body())
        results = []
        port = free_port()
        results.append(
            run("noop-grpcio", [sys.executable, "-c", NOOP_SERVER, f"127.0.0.1:{port}"], port, body, args)
        )
        port = free_port()
        results.append(
            run(
                "extauthz",
                [sys.executable, "-m", "extauthz", "serve", "--policies", str(REPO / "policies"),
                 "--listen", f"127.0.0.1:{port}", "--audit-log", os.devnull],
                port, body, args,
            )
        )
    base = results[0]["rps"] or 1.0
    print(f"{'server':<14}{'checks/s':>10}{'ratio':>8}{'2xx':>10}{'failed':>8}{'mean':>10}")
    for r in results:
        r["ratio_to_noop"] = round(r["rps"] / base, 3)
        print(f"{r['name']:<14}{r['rps']:>10.0f}{r['ratio_to_noop']:>8.2f}{r['ok_2xx']:>10}"
              f"{r['failed']:>8}{r['mean_latency']:>10}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grpc.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
