"""From a decision to the CheckResponse Envoy receives (the bytes come from envoy/response.py)."""

from __future__ import annotations

from extauthz.decision.decision import Decision
from extauthz.envoy import response


def metadata(decision: Decision) -> response.Metadata:
    """``dynamic_metadata`` for Envoy's access logs: who was decided about, and how."""
    ident = decision.identity
    token = ident.token
    return {  # the decision id is added per request (response.Prepared.finish)
        "allowed": decision.allowed,
        "reason": decision.reason,
        "policy": decision.policy,
        "peer": str(ident.peer) if ident.peer is not None else None,
        "peer_verified": ident.peer_verified if ident.peer is not None else None,
        "request_principal": ident.request_principal or None,
        "token_issuer": token.issuer if token is not None else None,
        "token_subject": token.subject if token is not None else None,
    }


def prepare(decision: Decision, managed: tuple[str, ...]) -> response.Prepared:
    """The response a decision determines, encoded but for the decision id (cached with it)."""
    if decision.allowed:
        return response.prepare_allow(
            decision.headers,
            decision.remove_headers,
            managed=managed,
            metadata=metadata(decision),
            remove_query_params=decision.remove_query_params,
        )
    extra = (("www-authenticate", decision.challenge),) if decision.challenge else ()
    return response.prepare_deny(
        decision.status, decision.reason, extra, metadata=metadata(decision)
    )


def render(
    decision: Decision,
    managed: tuple[str, ...] = response.IDENTITY_HEADERS,
    prepared: response.Prepared | None = None,
) -> bytes:
    """CheckResponse bytes for ``decision`` (from ``prepared`` when the cache had it)."""
    return (prepared or prepare(decision, managed)).finish(decision.decision_id)
