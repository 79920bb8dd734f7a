"""Signals and drain, the same for every serving process (grpcio, h2corn) and the supervisor.

SIGTERM/SIGINT: stop (drain), SIGHUP: reload. A serving process that stops first answers health
NOT_SERVING while it keeps deciding for ``drain_delay`` seconds (so that Envoy's health checks
move traffic away), then stops accepting and gives in-flight checks ``drain_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("extauthz.serving.lifecycle")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_signals(
    stop: Callable[[], None],
    reload: Callable[[], None],
    loop: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Call ``stop`` on SIGTERM/SIGINT and ``reload`` on SIGHUP (on ``loop`` when given)."""
    if loop is not None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, reload)
        return

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload()

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGHUP, on_hup)


def in_background(fn: Callable[[], None], name: str) -> Callable[[], None]:
    """``fn`` run on a daemon thread (a reload must never block a signal handler or the loop)."""
    return lambda: threading.Thread(target=fn, name=name, daemon=True).start()


def log_not_serving(drain_delay: float) -> None:
    """Draining begins: health says NOT_SERVING, checks are still decided for ``drain_delay``."""
    if drain_delay > 0:
        log.info("stopping: NOT_SERVING, still deciding for %.1fs", drain_delay)


def log_draining(drain_seconds: float) -> None:
    """The listener closes: in-flight checks get up to ``drain_seconds``."""
    log.info("stopping: draining in-flight checks (up to %.1fs)", drain_seconds)
