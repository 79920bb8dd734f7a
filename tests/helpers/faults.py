"""What the audit fault tests share (tests/faults): the policy they serve and allowed checks over
gRPC (a supervisor's workers: ``extauthz.devenv.processes.worker_pids``)."""

from __future__ import annotations

import grpc

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.tools.samples import check_request

# Allows every path under /public/ (the checks below), denies the rest.
PUBLIC_POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: public, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{operation: {paths: ["/public/*"]}}]}]
"""


def allowed_checks(target: str, n: int, start: int = 0) -> list[int]:
    """``n`` checks ``PUBLIC_POLICY`` allows, one after the other (``x-request-id`` req-I):
    their gRPC status codes."""
    codes = []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        for i in range(start, start + n):
            msg = check_request(path=f"/public/{i}", headers={"x-request-id": f"req-{i}"})
            resp = ext.CheckResponse.FromString(call(msg.SerializeToString(), timeout=10))
            codes.append(resp.status.code)
    return codes
