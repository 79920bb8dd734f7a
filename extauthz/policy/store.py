"""The policy store: the compiled set in force, swapped atomically on reload.

A check reads ``store.engine`` once and uses that object throughout, so it sees the old set or the
new one, never a mix. A load that fails leaves the last good set serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extauthz.policy import Engine, PolicyError, compile_policies, load_directory
from extauthz.policy.model import Where

log = logging.getLogger("extauthz.policy.store")


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """Health details of the policy set: what serves, and what the last attempt said."""

    generation: int
    loaded: bool  # a set is in force
    last_reload_ok: bool
    last_error: str | None  # why the last attempt was refused (file:line: reason)
    last_success_at: float | None  # epoch seconds
    last_failure_at: float | None
    policies: int
    files: int

    def as_dict(self) -> dict[str, object]:
        return {
            "generation": self.generation,
            "loaded": self.loaded,
            "last_reload_ok": self.last_reload_ok,
            "last_error": self.last_error,
            "last_success_at": self.last_success_at,
            "last_failure_at": self.last_failure_at,
            "policies": self.policies,
            "files": self.files,
        }


class PolicyStore:
    def __init__(
        self,
        directory: str | Path,
        *,
        root_namespace: str = "istio-system",
        xff_num_trusted_hops: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.root_namespace = root_namespace
        self.xff_num_trusted_hops = xff_num_trusted_hops
        self.engine: Engine | None = None
        self.generation = 0
        self.last_error: str | None = None
        self.last_success_at: float | None = None
        self.last_failure_at: float | None = None
        self._lock = threading.Lock()  # serialises reloads, never taken by checks
        self.listeners: list[Callable[[PolicyStore, bool], None]] = []

    def status(self) -> PolicyStatus:
        engine = self.engine
        return PolicyStatus(
            generation=self.generation,
            loaded=engine is not None,
            last_reload_ok=self.last_error is None,
            last_error=self.last_error,
            last_success_at=self.last_success_at,
            last_failure_at=self.last_failure_at,
            policies=len(engine.policies.authorization) if engine is not None else 0,
            files=len(engine.policies.files) if engine is not None else 0,
        )

    def load(self) -> Engine:
        """Load and swap in a new set; raise ``PolicyError`` (keeping the old set) on failure.

        The new set is loaded and compiled completely before the swap; a check reads
        ``store.engine`` once, so it sees the old set or the new one, never a mix.
        """
        with self._lock:
            try:
                policies = load_directory(self.directory, root_namespace=self.root_namespace)
                engine = compile_policies(
                    policies,
                    self.generation + 1,
                    xff_num_trusted_hops=self.xff_num_trusted_hops,
                )
            except Exception as exc:  # a compile fault must not kill the watcher either
                if not isinstance(exc, PolicyError):
                    log.exception("policy compilation failed")
                    exc = PolicyError(Where(str(self.directory), 0), f"cannot compile: {exc}")
                self.last_error = str(exc)
                self.last_failure_at = time.time()
                self._notify(False)
                raise exc from None
            self.generation += 1
            self.engine = engine  # the atomic swap: one reference assignment
            self.last_error = None
            self.last_success_at = time.time()
            self._notify(True)
            return engine

    def reload(self) -> bool:
        """Reload, logging instead of raising. True when the new set is in force."""
        try:
            engine = self.load()
        except PolicyError as exc:
            log.error("policy reload refused, the last good set keeps serving: %s", exc)
            return False
        log.info(
            "policies loaded: generation %d, %d authorization policies from %d files",
            engine.generation,
            len(engine.policies.authorization),
            len(engine.policies.files),
        )
        return True

    def _notify(self, ok: bool) -> None:
        for listener in self.listeners:
            try:
                listener(self, ok)
            except Exception:
                log.exception("reload listener failed")


class DirectoryWatcher:
    """Reloads the store when files in its directory change (inotify through watchfiles)."""

    def __init__(self, store: PolicyStore, *, debounce_ms: int = 200) -> None:
        self._store = store
        self._stop = threading.Event()
        self._debounce_ms = debounce_ms
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            from watchfiles import watch
        except ImportError:  # pragma: no cover - watchfiles is a dependency
            log.warning("watchfiles is not installed: reload with SIGHUP")
            return
        try:
            for changes in watch(
                self._store.directory,
                stop_event=self._stop,
                debounce=self._debounce_ms,
                recursive=False,
                raise_interrupt=False,
            ):
                # Any change, not just *.yaml: a Kubernetes ConfigMap swaps a ``..data`` link.
                if changes:
                    self._store.reload()
        except Exception:
            log.exception("policy directory watcher stopped; reload with SIGHUP")
