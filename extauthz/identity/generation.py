"""A counter of changes to trust material (bundles, JWKS).

Each store of trust material owns one and bumps it after every change; the composition root hands
``IdentityContext.trust_generation`` to the decision cache, whose keys include it, so a decision
made with earlier keys or CAs is never reused. Nothing here is process-wide: whoever builds a store
owns its counter.
"""

from __future__ import annotations

import threading


class Generation:
    """A counter bumped after every change (one writer at a time; readers read ``value``)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def bump(self) -> int:
        with self._lock:
            self.value += 1
            return self.value

    def __call__(self) -> int:
        return self.value
