"""What the decision cache keeps per entry, and the answer to a hit.

``Cached``: the decision (for the metrics, the tracer, and a hit turned into a deny), its
prepared response (``response.Prepared``: the CheckResponse but for the decision id) and the
encoded audit record of its hits (``record.HitTemplate``). A hit copies the decision with a new
id, finishes the response and splices the request's members into the record: no request view, no
record dict, no JSON encoding (issue 14).
"""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.decision.decision import Decision
from extauthz.decision.record import HitTemplate, hit_template
from extauthz.envoy.response import Prepared


@dataclass(frozen=True, slots=True)
class Cached:
    decision: Decision  # never changed once cached (a hit answers with a copy: cache_hit)
    prepared: Prepared
    template: HitTemplate | None  # None: the decision had no input (never for a cacheable one)


def cached(decision: Decision, prepared: Prepared) -> Cached:
    """The cache entry of a decision just made (with its input)."""
    return Cached(decision, prepared, hit_template(decision))
