"""The one applies-to rule: whether a policy resource applies to a request.

AuthorizationPolicy, RequestAuthentication and PeerAuthentication all scope the same way (see
the interface spec): a resource in the root namespace, or in none, applies in every namespace;
otherwise only to requests whose destination namespace is its own. A ``selector`` narrows that
to the routes whose ``context_extensions`` hold every one of its ``matchLabels`` (an absent or
empty selector narrows nothing). The engine compiles this rule (its index files rules by
``everywhere``/namespace and one label; ``selector_test`` is the rest), the identity resolver
and ``extauthz lint`` call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from extauthz.envoy.request import RequestView
from extauthz.policy.attributes import Predicate


class Scoped(Protocol):
    """A policy resource: it has a namespace and maybe a selector."""

    @property
    def namespace(self) -> str: ...

    @property
    def selector(self) -> Mapping[str, str] | None: ...


@dataclass(frozen=True, slots=True)
class Scope:
    namespace: str
    selector: Mapping[str, str] | None  # as written: None (absent) is not {} (PeerAuthentication tiers)
    everywhere: bool  # the root namespace or none: applies in every namespace

    @classmethod
    def of(cls, resource: Scoped, root_namespace: str) -> Scope:
        return cls(resource.namespace, resource.selector, resource.namespace in ("", root_namespace))

    def applies_to(self, req: RequestView) -> bool:
        if not self.everywhere and self.namespace != req.namespace:
            return False
        return self.labels_match(req.context_extensions)

    def labels_match(self, labels: Mapping[str, str]) -> bool:
        """Whether route labels (``context_extensions``) satisfy the selector."""
        sel = self.selector
        return not sel or all(labels.get(k) == v for k, v in sel.items())

    def selector_test(self) -> Predicate | None:
        """The selector half of ``applies_to`` as a compiled predicate; None when it narrows nothing.

        (The namespace half is decided by the engine's index, which files rules by scope.)
        """
        if not self.selector:  # no selector, or an empty matchLabels: applies to every route
            return None
        items = tuple(self.selector.items())
        return lambda ctx: all(ctx.request.context_extensions.get(k) == v for k, v in items)

    def covers(self, other: Scope) -> bool:
        """Every request ``other`` applies to, this scope applies to too."""
        if not self.everywhere and (other.everywhere or self.namespace != other.namespace):
            return False
        sb = other.selector or {}
        return all(sb.get(k) == v for k, v in (self.selector or {}).items())
