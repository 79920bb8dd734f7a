"""Identity headers: which headers an allowed request carries upstream, and from which field of
the established identity (the ``identity_headers`` setting)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from extauthz.identity.model import Identity

# What an identity header may carry (the ``identity_headers`` setting maps names to these).
IDENTITY_FIELDS: dict[str, Callable[[Identity], str]] = {
    "peer": lambda i: str(i.peer) if i.peer is not None else "",  # spiffe://td/path
    "peer_trust_domain": lambda i: i.peer.trust_domain if i.peer is not None else "",
    "request_principal": lambda i: i.request_principal,  # iss/sub of the validated token
    "token_issuer": lambda i: i.token.issuer if i.token is not None else "",
    "token_subject": lambda i: i.token.subject if i.token is not None else "",
}
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_RESERVED = frozenset({"host", "content-length", "transfer-encoding", "connection", "te"})


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """Which identity headers an allowed request carries upstream, and from which field."""

    fields: tuple[tuple[str, str], ...] = (("x-spiffe-id", "peer"),)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> IdentityHeaders:
        out = []
        for name, fieldname in mapping.items():
            n = str(name).lower()
            if not _HEADER_NAME.fullmatch(n) or n in _RESERVED:
                raise ValueError(f"identity header {name!r}: not a header name we may set")
            if fieldname not in IDENTITY_FIELDS:
                raise ValueError(
                    f"identity header {name!r}: field {fieldname!r} is not one of "
                    + ", ".join(IDENTITY_FIELDS)
                )
            out.append((n, str(fieldname)))
        return cls(tuple(out))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fields)

    def values(self, identity: Identity) -> tuple[tuple[str, str], ...]:
        """The headers to set for ``identity``: those whose field has a value."""
        out = []
        for name, fieldname in self.fields:
            value = IDENTITY_FIELDS[fieldname](identity)
            if value and value.isprintable() and value.isascii():  # never a CR/LF or NUL
                out.append((name, value))
        return tuple(out)
