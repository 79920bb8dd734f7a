"""What the decision cache keeps per entry, and the answer to a hit.

``Cached``: the decision (for the metrics, the tracer, and a hit turned into a deny), its
prepared response (``response.Prepared``: the CheckResponse but for the decision id) and the
encoded audit record of its hits (``record.HitTemplate``). A hit copies the decision with a new
id, finishes the response and splices the request's members into the record: no request view, no
record dict, no JSON encoding (issue 14).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from extauthz.decision.decision import DECISION_FIELDS, Decision
from extauthz.decision.record import HitTemplate, hit_template
from extauthz.envoy.response import Prepared


@dataclass(frozen=True, slots=True)
class Cached:
    decision: Decision  # never changed once cached (a hit answers with a copy: cache_hit)
    prepared: Prepared
    template: HitTemplate | None  # None: the decision had no input (never for a cacheable one)


def _same(value: Any, key: Hashable = None) -> Any:
    return value


def cached(
    decision: Decision, prepared: Prepared, share: Callable[..., Any] = _same
) -> Cached:
    """The cache entry of a decision just made (with its input).

    With its template, the entry keeps the decision without its input and id (a hit takes both
    from the template and a new id): ``share`` (``DecisionCache.share``) then makes entries
    whose decisions, responses and templates are equal keep one ``Cached`` between them."""
    template = hit_template(decision)
    if template is None:
        return Cached(decision, prepared, None)
    kept = Decision(*[getattr(decision, name) for name in DECISION_FIELDS])
    kept.decision_id = ""
    kept.input = None
    kept.identity = share(kept.identity)
    kept.headers = share(kept.headers)
    prepared = share(prepared.split())
    template = share(template)
    fields = tuple(getattr(kept, name) for name in DECISION_FIELDS)
    entry: Cached = share(Cached(kept, prepared, template), ("cached", fields, prepared, template))
    return entry
