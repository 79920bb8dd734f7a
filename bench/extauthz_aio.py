"""extauthz's Check core served through alternative grpcio stacks (for choosing one).

    python bench/extauthz_aio.py aio HOST:PORT POLICY_DIR

``grpcio-sync`` is ``extauthz serve`` itself; this file only adds the grpc.aio variant
(the handler is synchronous and runs on the event loop: no thread hop).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any


def aio(listen: str, policies: str) -> None:
    import grpc

    from extauthz.decision.audit import AuditLog
    from extauthz.envoy.grpc import AUTHZ_SERVICE, CHECK_METHOD
    from extauthz.policy.store import PolicyStore
    from extauthz.serving.service import Service
    from extauthz.settings import Settings

    settings = Settings(policies=policies, listen=listen, audit_log=os.devnull)
    store = PolicyStore(policies)
    store.load()
    service = Service(settings, store, AuditLog.open(os.devnull))

    async def check(data: bytes, ctx: Any) -> bytes:
        return service.handle_check(data, ctx)

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    AUTHZ_SERVICE, {CHECK_METHOD: grpc.unary_unary_rpc_method_handler(check)}
                ),
            )
        )
        server.add_insecure_port(listen)
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1] == "aio":
        aio(sys.argv[2], sys.argv[3])
