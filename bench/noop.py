"""No-op Check servers: the ceilings extauthz is compared with.

    python bench/noop.py grpcio-sync HOST:PORT [THREADS]   # grpcio, thread pool (extauthz's stack)
    python bench/noop.py grpcio-aio HOST:PORT              # grpc.aio
    h2corn --grpc --no-http1 bench.noop:app                # ASGI: any ASGI server with trailers

Each answers every Check with the same pre-serialized OK CheckResponse and does nothing else.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _ok() -> bytes:
    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext

    resp = ext.CheckResponse()
    resp.status.code = 0
    return resp.SerializeToString()


def grpcio_sync(listen: str, threads: int = 16) -> None:
    import grpc

    body = _ok()

    def check(data: bytes, ctx: Any) -> bytes:
        return body

    server = grpc.server(ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "envoy.service.auth.v3.Authorization",
                {"Check": grpc.unary_unary_rpc_method_handler(check)},
            ),
        )
    )
    server.add_insecure_port(listen)
    server.start()
    server.wait_for_termination()


def grpcio_aio(listen: str) -> None:
    import grpc

    body = _ok()

    async def check(data: bytes, ctx: Any) -> bytes:
        return body

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "envoy.service.auth.v3.Authorization",
                    {"Check": grpc.unary_unary_rpc_method_handler(check)},
                ),
            )
        )
        server.add_insecure_port(listen)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


# --------------------------------------------------------------------------- ASGI no-op

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_OK = _ok()
_FRAME = b"\x00" + struct.pack(">I", len(_OK)) + _OK
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc")],
    "trailers": True,
}
_BODY = {"type": "http.response.body", "body": _FRAME, "more_body": False}
_TRAILERS = {"type": "http.response.trailers", "headers": [(b"grpc-status", b"0")], "more_trailers": False}


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A minimal ASGI gRPC Check answering OK (for comparing ASGI servers)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send(_START)
    await send(_BODY)
    await send(_TRAILERS)


if __name__ == "__main__":
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "grpcio-sync":
        grpcio_sync(where, int(sys.argv[3]) if len(sys.argv) > 3 else 16)
    elif kind == "grpcio-aio":
        grpcio_aio(where)
    else:
        sys.exit(f"unknown kind {kind!r}")
