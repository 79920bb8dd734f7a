"""Slow and unfinished streams: how much memory one client can pin, and whether others get answers.

    python bench/run.py slow-streams [--transport h2corn|grpcio] [--connections 1] [--streams 40]
                                     [--bytes 4194304] [--hold 12] [--config FILE]

Starts ``extauthz serve`` on loopback, then (issue 13, "Starving the service"): each attacking
connection opens ``--streams`` Check streams and sends up to ``--bytes`` of DATA on each without
ever ending them (round-robin, as flow control allows), then keeps the connection open for
``--hold`` seconds without sending more. Meanwhile a well-behaved client sends one normal check
every 50 ms on its own connection. Reports the service's RSS (before, peak, at the end of the hold,
after the attacker closed), what happened to the attacking streams (reset, answered, still open)
and how many of the good client's checks were answered. Everything is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, check_request_bytes, free_port, started

from extauthz.devenv.h2raw import RawH2


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class Sampler(threading.Thread):
    """RSS every 50 ms; ``peak`` since the last ``reset()``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return


class GoodClient(threading.Thread):
    """One normal check every 50 ms on its own connection; counts answers."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.answered = 0
        self.failed = 0
        self.worst_ms = 0.0
        self.body = check_request_bytes()

    def run(self) -> None:
        client: RawH2 | None = None
        while not self.stop.wait(0.05):
            try:
                if client is None or client.closed:
                    client = RawH2("127.0.0.1", self.port, timeout=5.0)
                t0 = time.monotonic()
                state = client.call(self.body, timeout=5.0)
                ms = (time.monotonic() - t0) * 1000
            except OSError:
                self.failed += 1
                client = None
                continue
            if state.grpc_status == 0 and state.message():
                self.answered += 1
                self.worst_ms = max(self.worst_ms, ms)
            else:
                self.failed += 1
        if client is not None:
            client.close()


def attack(port: int, conns: int, streams: int, nbytes: int, seconds: float) -> list[RawH2]:
    """Open the streams and send what flow control lets through, round-robin, for ``seconds``."""
    clients = [RawH2("127.0.0.1", port) for _ in range(conns)]
    # The gRPC frame declares one byte more than is ever sent: never complete, yet within a
    # 4 MiB message cap (a server that checks the declared length early is not tricked into it).
    chunk = b"\x00" + (nbytes - 4).to_bytes(4, "big") + bytes(64 * 1024 - 5)
    filler = bytes(64 * 1024)
    open_ids: list[tuple[RawH2, int]] = []
    for c in clients:
        for _ in range(min(streams, c.max_streams)):
            open_ids.append((c, c.open()))
    deadline = time.monotonic() + seconds
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for c, sid in open_ids:
            st = c.streams[sid]
            if st.finished or c.closed or st.sent >= nbytes:
                continue
            data = chunk if st.sent == 0 else filler
            if c.send(sid, data[: nbytes - st.sent], timeout=0.01):
                progress = True
        for c in clients:
            c.pump(0.0)
    return clients


def summarize(clients: list[RawH2]) -> dict[str, int]:
    states = [s for c in clients for s in c.streams.values()]
    return {
        "streams": len(states),
        "reset": sum(1 for s in states if s.reset is not None and not s.ended),
        "answered": sum(1 for s in states if s.ended),
        "denied": sum(1 for s in states if s.ended and s.grpc_status == 0 and s.message()),
        "open": sum(1 for s in states if not s.finished),
        "sent_mib": round(sum(s.sent for s in states) / 2**20),
    }


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(REPO / ".venv/bin/python"),
            "-m",
            "extauthz",
            "serve",
            "--policies",
            str(REPO / "policies"),
            "--listen",
            f"127.0.0.1:{port}",
            "--audit-log",
            f"{tmp}/audit.log",
            "--transport",
            args.transport,
        ]
        if args.config:
            cmd += ["--config", args.config]
        with started("extauthz", cmd, port=port) as proc:
            with RawH2("127.0.0.1", port) as warm:
                for _ in range(20):
                    warm.call(check_request_bytes())
            time.sleep(0.5)
            before = rss_mb(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            good = GoodClient(port)
            good.start()
            t0 = time.monotonic()
            clients = attack(port, args.connections, args.streams, args.bytes, args.attack_seconds)
            sent_at = time.monotonic() - t0
            after_send = summarize(clients)
            hold_end = time.monotonic() + args.hold
            while time.monotonic() < hold_end:
                for c in clients:
                    c.pump(0.02)
            held = rss_mb(proc.pid)
            after_hold = summarize(clients)
            for c in clients:
                c.close()
            time.sleep(2.0)
            closed = rss_mb(proc.pid)
            good.stop.set()
            good.join(10)
            sampler.stop.set()
    return {
        "transport": args.transport,
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(sampler.peak, 1),
        "rss_end_of_hold_mb": round(held, 1),
        "rss_after_close_mb": round(closed, 1),
        "send_s": round(sent_at, 1),
        "sent_mib": after_send["sent_mib"],
        "streams": after_send["streams"],
        "reset_or_answered_by_send_end": after_send["reset"] + after_send["answered"],
        "reset": after_hold["reset"],
        "answered": after_hold["answered"],
        "answered_with_deny": after_hold["denied"],
        "still_open": after_hold["open"],
        "good_answered": good.answered,
        "good_failed": good.failed,
        "good_worst_ms": round(good.worst_ms, 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/run.py slow-streams", description=__doc__.split("\n")[0])
    p.add_argument("--transport", default="h2corn", choices=("h2corn", "grpcio"))
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--streams", type=int, default=40)
    p.add_argument("--bytes", type=int, default=4 * 1024 * 1024, help="DATA per stream, never ended")
    p.add_argument("--attack-seconds", type=float, default=20.0, help="bound on the sending phase")
    p.add_argument("--hold", type=float, default=12.0, help="seconds the connections stay open after")
    p.add_argument("--config", help="an extauthz --config YAML (bounds to try)")
    args = p.parse_args(argv)
    row = run_one(args)
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key.ljust(width)}  {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"slow_streams_{args.transport}.json"
    out.write_text(json.dumps({"meta": vars(args), "results": [row]}, indent=2))
    print(f"results: {out}")
    return 0
