"""Anomaly response: quarantine a caller whose requests keep being denied.

A caller is the client extauthz establishes: behind a trusted proxy (``--trusted-proxy``) that
sends ``x-forwarded-client-cert``, the client the proxy vouches for (the last element's URI, or
its certificate hash without one), never the proxy itself, which many clients share; otherwise
its mTLS principal as Envoy reports it (``source.principal``), or, without one, its source
address. When more than ``max_denies`` of its requests are denied within ``window``
seconds, every request of it is denied (reason ``quarantined``) for ``duration`` seconds, then it
is released automatically. Quarantine answers do not count as denials (it would never end), nor
do the service's own faults. Memory is bounded: at most ``max_tracked`` callers are followed;
past that the oldest are forgotten first.

Off by default (``anomaly_quarantine: true`` turns it on). Behind a proxy that hides client
addresses, callers without a principal share the proxy's address: quarantine would hit all of them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from extauthz.envoy.request import RequestView
from extauthz.identity.xfcc import HEADER as XFCC_HEADER
from extauthz.identity.xfcc import TrustedProxies, XfccError, last_element

CallerKey = tuple[str, str]


def caller_of(req: RequestView, trusted: TrustedProxies | None = None) -> CallerKey:
    """The quarantine key of ``req``'s caller, the same client the identity step establishes
    (identity/resolver.py reads XFCC from trusted proxies by the same rule)."""
    if trusted:
        xfcc = req.headers.get(XFCC_HEADER)
        if xfcc is not None and trusted.trusts(req.source.address):
            try:
                element = last_element(xfcc)
            except XfccError:
                element = None  # denied as invalid_peer_identity: the proxy's own fault
            if element is not None and element.uri:
                return ("principal", element.uri)
            if element is not None and element.hash:
                return ("xfcc-hash", element.hash)
    if req.source.principal:
        return ("principal", req.source.principal)
    return ("address", req.source.address)


@dataclass(frozen=True, slots=True)
class QuarantineEvent:
    caller: CallerKey
    started: bool  # True: quarantined now; False: released
    until: float  # epoch seconds the quarantine ends (or ended)
    denies: int


class Quarantine:
    def __init__(
        self,
        *,
        max_denies: int = 20,
        window: float = 10.0,
        duration: float = 60.0,
        max_tracked: int = 100_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_denies < 1 or window <= 0 or duration <= 0 or max_tracked < 1:
            raise ValueError("anomaly settings must be positive")
        self.max_denies = max_denies
        self.window = window
        self.duration = duration
        self.max_tracked = max_tracked
        self.clock = clock
        self._denies: OrderedDict[CallerKey, deque[float]] = OrderedDict()
        self._until: OrderedDict[CallerKey, float] = OrderedDict()
        self._lock = threading.Lock()
        self.quarantines = 0  # started so far

    def check(self, caller: CallerKey) -> tuple[bool, QuarantineEvent | None]:
        """(is the caller quarantined now, the release event when it was released just now)."""
        if not self._until:  # the common case, without a lock
            return False, None
        now = self.clock()
        with self._lock:
            until = self._until.get(caller)
            if until is None:
                return False, None
            if now < until:
                return True, None
            del self._until[caller]
            return False, QuarantineEvent(caller, False, until, 0)

    def record_deny(self, caller: CallerKey) -> QuarantineEvent | None:
        """Count one denial; the start event when it puts the caller in quarantine."""
        now = self.clock()
        with self._lock:
            seen = self._denies.get(caller)
            if seen is None:
                seen = self._denies[caller] = deque(maxlen=self.max_denies + 1)
                if len(self._denies) > self.max_tracked:
                    self._denies.popitem(last=False)
            else:
                self._denies.move_to_end(caller)
            seen.append(now)
            if len(seen) <= self.max_denies or now - seen[0] > self.window:
                return None
            del self._denies[caller]
            until = now + self.duration
            self._until[caller] = until
            if len(self._until) > self.max_tracked:
                self._until.popitem(last=False)
            self.quarantines += 1
            return QuarantineEvent(caller, True, until, len(seen))

    @property
    def active(self) -> int:
        now = self.clock()
        with self._lock:
            return sum(1 for t in self._until.values() if now < t)
