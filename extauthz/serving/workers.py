"""``serve --workers N``: a supervisor and N worker processes, one listen address each.

Why one address per worker: Envoy keeps about one HTTP/2 connection per worker thread per
endpoint, so N processes behind one SO_REUSEPORT port would see a handful of connections and
leave cores idle. Worker ``i`` listens on ``PORT+i`` (``unix:PATH.i``; worker 0 on the base
address) and ``extauthz envoy-config --workers N`` lists every address as a cluster endpoint, so
Envoy's load balancer spreads the checks.

- Policies: every worker loads and watches the directory itself; the supervisor loads it once
  first, so a directory that does not parse fails startup with file and line, as with one process.
- Signals: SIGHUP is forwarded to every worker (each reloads); SIGTERM/SIGINT are forwarded as
  SIGTERM, each worker drains its in-flight checks, the supervisor waits and exits 0.
- Crashes: a worker that exits on its own is restarted (at most once a second; after
  ``MAX_RESTARTS`` restarts within a minute the supervisor gives up and exits 1).
- Audit: one writer. Each worker writes its JSON lines to a pipe (its standard output); the
  supervisor reads complete lines and writes them to ``--audit-log`` (a file, or ``-`` for its
  own standard output) through one AuditLog, which seals them into one hash chain (rotation and
  HMAC included), so the log stays one verifiable JSON Lines stream and no line is ever split. Every record
  carries ``worker`` (the index): the per-worker counters. Worker ``i`` counts the records it
  offers in slot ``i`` of the log's ``PATH.offered`` page (decision/audit/shared.py): a dead
  worker is settled at once, and a restart after a SIGKILL of the supervisor finds what its
  memory and the pipes held.
- Metrics: ``--metrics HOST:PORT`` gives worker ``i`` its own ``/metrics`` on ``PORT+i``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, replace
from typing import IO

from extauthz.decision.audit import AuditLog
from extauthz.decision.audit.chain import unsealed_body
from extauthz.decision.audit.files import LOST_EVENT
from extauthz.decision.audit.lines import accounting_line
from extauthz.decision.audit.shared import ENV_AUDIT_FD, Offered, Tally
from extauthz.serving import lifecycle
from extauthz.serving.service import open_audit_log, open_policy_store
from extauthz.settings import Settings, worker_listen

log = logging.getLogger("extauthz.serving.workers")

ENV_SETTINGS = "EXTAUTHZ_WORKER_SETTINGS"
ENV_INDEX = "EXTAUTHZ_WORKER_INDEX"
MAX_RESTARTS = 10  # within RESTART_WINDOW seconds
RESTART_WINDOW = 60.0
RESTART_DELAY = 1.0


def worker_settings(settings: Settings, index: int) -> Settings:
    """What worker ``index`` runs with: its own address (and metrics port), audit to its pipe."""
    metrics = settings.metrics
    if metrics:
        host, _, port = metrics.rpartition(":")
        metrics = f"{host}:{int(port) + index}"
    return replace(
        settings,
        listen=worker_listen(settings.listen, index),
        workers=1,
        audit_log="-",
        metrics=metrics,
    )


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread | None = None
        self.started_at = 0.0
        self.offered_at_start: tuple[int, int] | None = None  # its slot when it started
        self.tally = Tally()  # what arrived from it


class Supervisor:
    def __init__(self, settings: Settings, audit: AuditLog) -> None:
        self.settings = settings
        self.audit = audit
        self.workers = [_Worker(i) for i in range(settings.workers)]
        self.restarts: deque[float] = deque()
        self.stopping = threading.Event()
        self.hup = threading.Event()
        # where the workers count their offers: beside the log, or in memory (--audit-log -)
        self.offered = audit.offered or Offered.in_memory()
        audit.on_failing = self.offered.set_failing

    def close(self) -> None:
        if self.offered is not self.audit.offered:
            self.offered.close()

    # ------------------------------------------------------------------ processes

    def _spawn(self, w: _Worker) -> None:
        env = dict(os.environ)
        env[ENV_SETTINGS] = json.dumps(asdict(worker_settings(self.settings, w.index)))
        env[ENV_INDEX] = str(w.index)
        w.offered_at_start, w.tally = self.offered.slot_counts(w.index), Tally()
        self.offered.set_failing(self.audit.failing)
        env[ENV_AUDIT_FD] = self.offered.env_value(w.index)
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "extauthz.serving.main"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            pass_fds=(self.offered.fd,),  # and with it the lock on PATH.offered (shared.py)
        )
        w.started_at = time.monotonic()
        w.pump = threading.Thread(
            target=self._pump,
            args=(w.index, w.proc.stdout, w.tally),
            name=f"audit-pump-{w.index}",
            daemon=True,
        )
        w.pump.start()
        log.info(
            "worker %d started (pid %d) on %s",
            w.index,
            w.proc.pid,
            worker_listen(self.settings.listen, w.index),
        )

    def _pump(self, index: int, pipe: IO[bytes] | None, tally: Tally) -> None:
        """Copy complete lines from a worker's pipe to the audit sink."""
        if pipe is None:
            return
        rest = b""
        fd = pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            if cut:
                reseal_lines(self.audit, data[:cut], tally)
        if rest:
            log.error("worker %d ended in the middle of an audit line; %d bytes dropped", index, len(rest))
        pipe.close()

    def _settle(self, w: _Worker) -> None:
        """After worker ``w`` exited and its pipe was read to the end: record what died with it."""
        if w.offered_at_start is None:
            return
        now, then = self.offered.slot_counts(w.index), w.offered_at_start
        allowed, denied = w.tally.missing((now[0] - then[0], now[1] - then[1]))
        pid = w.proc.pid if w.proc is not None else 0
        self.audit.count_lost(allowed, denied, f"worker {w.index} (pid {pid}) exited with them unwritten")
        w.offered_at_start = None

    def _signal_all(self, signum: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signum)

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        lifecycle.install_signals(self.stopping.set, self.hup.set)
        for w in self.workers:
            self._spawn(w)
        code = 0
        while not self.stopping.wait(0.2):
            if self.hup.is_set():
                self.hup.clear()
                log.info("SIGHUP: asking every worker to reload")
                self._signal_all(signal.SIGHUP)
            if not self._reap_and_restart():
                code = 1
                break
        self._shutdown()
        return code

    def _reap_and_restart(self) -> bool:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None or w.proc.poll() is None:
                continue
            if now - w.started_at < RESTART_DELAY:
                continue  # let a crash loop breathe
            log.error("worker %d (pid %d) exited with %s; restarting", w.index, w.proc.pid, w.proc.returncode)
            if w.pump is not None:
                w.pump.join(5)
            self._settle(w)
            while self.restarts and now - self.restarts[0] > RESTART_WINDOW:
                self.restarts.popleft()
            if len(self.restarts) >= MAX_RESTARTS:
                log.error("%d worker restarts within %.0fs: giving up", MAX_RESTARTS, RESTART_WINDOW)
                return False
            self.restarts.append(now)
            self._spawn(w)
        return True

    def _shutdown(self) -> None:
        log.info("stopping: SIGTERM to %d workers", len(self.workers))
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_seconds + 10.0
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time; killing it", w.index)
                w.proc.kill()
                w.proc.wait(5)
            if w.pump is not None:
                w.pump.join(5)
            self._settle(w)


LOST_MARK = f'"event":"{LOST_EVENT}"'
PUMP_WAIT = 2.0  # seconds a worker line waits for room in the supervisor's queue


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def reseal_lines(audit: AuditLog, data: bytes, tally: Tally | None = None) -> None:
    """Re-seal workers' records into the one hash chain of ``--audit-log``.

    Each worker chains its own pipe; interleaved, those chains would not verify, so the
    supervisor cuts the workers' chain members off each line (no JSON parsing: they are the
    line's last members) and seals the body again. When the queue is nearly full the pump waits
    (``PUMP_WAIT``): the pipe fills and the workers' own queues push back on their checks,
    where the loss accounting and ``audit_overflow`` apply. ``tally`` counts what arrived."""
    tally = tally if tally is not None else Tally()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            line = ""
        body = unsealed_body(line) if line.startswith("{") else None
        if body is None:
            tally.denied += 1  # a record arrived, unreadable: the event below stands for it
            audit.emit({"event": "audit_line_unreadable", "bytes": len(raw)})
            continue
        lost = json.loads(body) if LOST_MARK in body else None  # rare: parse only these
        if isinstance(lost, dict) and lost.get("event") == LOST_EVENT and "decision_id" not in lost:
            # the worker's own loss report (top level, not text in a record): not an offered record
            a, d = _count(lost.get("allowed")), _count(lost.get("denied"))
            tally.reported_allowed += a
            tally.reported_denied += d
            audit.emit_body(accounting_line(body, a, d), False, wait=PUMP_WAIT)
            continue
        i = body.find('"allowed":')
        allowed = i != -1 and body.startswith("true", i + 10)
        if allowed:
            tally.allowed += 1
        else:
            tally.denied += 1
        audit.emit_body(body, allowed, wait=PUMP_WAIT)


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM. Raises PolicyError like one process."""
    open_policy_store(settings)  # fails startup with file and line, as with one process
    audit = open_audit_log(settings, count_offers=False)
    supervisor: Supervisor | None = None
    try:
        supervisor = Supervisor(settings, audit)
        return supervisor.run()
    finally:
        audit.close()
        if supervisor is not None:
            supervisor.close()


def exit_with_parent() -> None:
    """A worker must not outlive its supervisor (SIGKILL leaves no chance to forward)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
