"""``asgi``: CPU per call of the h2corn ASGI app (``GrpcApp``), in process, against the no-op app.

    python bench/run.py asgi [--calls 20000] [--split] [--policies policies]

The app is built as ``serve`` builds it (``serving.service.running``: decision cache, audit log
to a real file with its writer thread, metrics) and called on one asyncio loop with in-memory
``receive``/``send`` (no sockets, no h2corn): what our own Python costs per Check, the ASGI glue
included, without the transport. Every call sends a different request (bench/bodies.py: request
id, time and trace ids differ), the allowed one (``--path /admin/users``: the denied one), so
every call after the first is a cache hit.

``--split``: deliver the body as h2corn does, the message in one ``http.request`` with
``more_body`` and an empty last one (what a real h2corn sends for every h2load or Envoy call);
without it, the whole body in one event. The row ``noop`` is ``bench/noop.py``'s app, the same
way. CPU is the process's (audit writer thread included) over the timed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bodies import check_request  # noqa: E402

CHECK = "/envoy.service.auth.v3.Authorization/Check"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _drive(app: Any, frames: list[bytes], n: int, split: bool) -> int:
    scope = {
        "type": "http",
        "method": "POST",
        "path": CHECK,
        "headers": [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
        "client": ("127.0.0.1", 50000),
    }
    answered = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal answered
        if message["type"] == "http.response.trailers":
            answered += 1

    for i in range(n):
        f = frames[i % len(frames)]
        events: Iterator[dict[str, Any]] = iter(
            [
                {"type": "http.request", "body": f, "more_body": True},
                {"type": "http.request", "body": b"", "more_body": False},
            ]
            if split
            else [{"type": "http.request", "body": f, "more_body": False}]
        )

        async def receive(events: Iterator[dict[str, Any]] = events) -> dict[str, Any]:
            return next(events, {"type": "http.disconnect"})

        await app(scope, receive, send)
    return answered


def per_call(app: Any, frames: list[bytes], n: int, split: bool) -> float:
    """CPU microseconds per call (after a warm-up of 2,000 calls)."""
    asyncio.run(_drive(app, frames, 2000, split))
    before = _cpu()
    answered = asyncio.run(_drive(app, frames, n, split))
    spent = _cpu() - before
    if answered != n:
        raise SystemExit(f"{answered} of {n} calls answered")
    return spent / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--split", action="store_true", help="body + an empty last event, as h2corn sends")
    p.add_argument("--policies", default="policies")
    p.add_argument("--path", default="/api/items", help="the request path (/admin/users: a deny)")
    p.add_argument("--uncached", action="store_true", help="cache_size 0, no token: decided every time")
    args = p.parse_args(argv)

    import noop

    from extauthz.serving.h2corn import GrpcApp
    from extauthz.serving.service import running
    from extauthz.settings import Settings

    token: dict[str, Any] = {"token": None} if args.uncached else {}
    bodies = (check_request(i, path=args.path, **token) for i in range(2000))
    frames = [b"\x00" + struct.pack(">I", len(b)) + b for b in bodies]
    print(f"noop      {per_call(noop.app, frames, args.calls, args.split):6.1f} us CPU per call")
    with tempfile.TemporaryDirectory(prefix="bench-asgi-") as tmp:
        settings = Settings(
            policies=args.policies,
            audit_log=os.path.join(tmp, "audit.jsonl"),
            cache_size=0 if args.uncached else Settings.cache_size,
        )
        with running(settings) as service:
            app = GrpcApp(service, settings)
            us = per_call(app, frames, args.calls, args.split)
            audit = service.audit
            deadline = time.monotonic() + 10
            while audit is not None and audit.depth and time.monotonic() < deadline:
                time.sleep(0.05)
            written = audit.written if audit is not None else 0
            lost = audit.lost if audit is not None else 0
            print(f"extauthz  {us:6.1f} us CPU per call  (records written {written}, lost {lost})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
