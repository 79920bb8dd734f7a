"""The one health rule, served by every transport as ``grpc.health.v1.Health``.

- ``""`` and ``envoy.service.auth.v3.Authorization``: SERVING once a policy set is loaded and
  until the process starts draining.
- ``extauthz.policy``: as above, and NOT_SERVING while the last policy edit was refused (the last
  good set keeps serving; the log and the metrics say why).
- Any other name: unknown (NOT_FOUND).
"""

from __future__ import annotations

from typing import Protocol

from grpc_health.v1 import health_pb2

from extauthz.envoy.grpc import AUTHZ_SERVICE

POLICY_HEALTH_SERVICE = "extauthz.policy"
HEALTH_SERVICES = ("", AUTHZ_SERVICE, POLICY_HEALTH_SERVICE)
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class PolicyState(Protocol):
    @property
    def engine(self) -> object | None: ...

    @property
    def last_error(self) -> object | None: ...


def health_status(store: PolicyState, service: str, *, draining: bool) -> int | None:
    """The status of ``service`` (a HealthCheckResponse.ServingStatus), None when unknown."""
    if service not in HEALTH_SERVICES:
        return None
    serving = store.engine is not None and not draining
    if service == POLICY_HEALTH_SERVICE:
        serving = serving and store.last_error is None
    return SERVING if serving else NOT_SERVING
