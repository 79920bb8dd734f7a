"""Every reason a decision can carry: the ``reason`` of a deny body, an audit record and the
``extauthz_checks_total{reason}`` label. A small closed set, named in one place.

Reasons are produced by several phases (the request view, identity, policy, the pipeline), so this
module sits below all of them and imports nothing.
"""

from __future__ import annotations

ALLOWED = "allowed"
# Policy (extauthz.policy.engine)
DENIED_BY_POLICY = "denied_by_policy"
NO_MATCH = "no_matching_policy"
# Identity (extauthz.identity.resolver)
INVALID_TOKEN = "invalid_token"
INVALID_PEER = "invalid_peer_identity"
INVALID_CERT = "invalid_peer_certificate"
MTLS_REQUIRED = "peer_authentication_required"
AUTHN_REQUIRED = "authentication_required"
# The request and the service (extauthz.pipeline)
INVALID_PATH = "invalid_request"
MALFORMED = "malformed_check_request"
NO_POLICY = "no_policy_loaded"
INTERNAL = "internal_error"
QUARANTINED = "quarantined"  # too many denials lately (decision/quarantine.py)
AUDIT_UNAVAILABLE = "audit_unavailable"  # audit_overflow: deny, and the log is behind
DEADLINE_EXCEEDED = "deadline_exceeded"  # decided after the caller's grpc-timeout had passed
RESOURCE_LIMIT = "resource_limit"  # the request tripped a resource bound (serving/bounds.py)

# Decisions that depend only on the request and the policy set: the decision cache may keep them.
# (A missing token's 401 too: its key holds every token location, and the search for a token that
# would help, identity/witness.py, reads only keyed inputs.)
CACHEABLE = frozenset({ALLOWED, DENIED_BY_POLICY, NO_MATCH, AUTHN_REQUIRED})
