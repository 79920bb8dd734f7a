"""The soak's adversaries and gauges (bench/soak.py): slow streams, worker kills, RSS, the count.

- ``SlowStreams``: a client that connects straight to extauthz's worker ports (not through Envoy)
  and, round after round, opens many Check streams and sends partial bodies without ever ending
  them (``extauthz.devenv.h2raw``), so the resource bounds trip while the real traffic goes on.
  Rounds cycle through three kinds, each on the next worker's port: ``oversize`` (a frame
  declaring more than ``max_message_bytes``: refused on its header), ``budget`` (nearly a whole
  message on each of many streams: more than the per-connection budget, the streams over it
  refused at once, the others by the body timeout) and ``timeout`` (a few KiB of a larger
  message: the body timeout refuses it). Each stream ends answered (a deny) or reset:
  ``refused``; one still open when the round's bound expired is a failure of the bounds.
- ``WorkerKiller``: every ``every`` seconds SIGKILLs one worker of the ``--workers`` supervisor
  (children found through ``/proc``), alternating between workers, and sees it restarted.
- ``RssSampler``: the supervisor's and its workers' RSS, summed, every 0.25 s: start, peak, end.
- ``scan_log``: one pass over the audit log's rotated set: records by reason, the decision ids
  and the losses the log states; ``verify_log``: ``extauthz audit verify`` over the set and head.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from extauthz.decision.audit.files import LOST_EVENT, rotated_files
from extauthz.devenv.h2raw import RawH2
from extauthz.devenv.net import LOOPBACK, free_port, tcp_open
from extauthz.devenv.processes import worker_pids

# Reasons only a Check that never came through Envoy gets here: a body that tripped a bound.
SLOW_REASONS = ("resource_limit", "malformed_check_request")


# --------------------------------------------------------------------------- processes


def free_ports(n: int) -> int:
    """A base port with ``n`` consecutive free ports (worker i listens on base + i)."""
    for _ in range(100):
        base = free_port()
        if base + n <= 65536 and all(not tcp_open(LOOPBACK, base + i, 0.05) for i in range(1, n)):
            return base
    raise RuntimeError(f"no {n} consecutive free ports")


def killed_worker_losses(stderr: str) -> int:
    """Records the supervisor counted lost with a killed worker (its log lines)."""
    return sum(
        int(a) + int(d)
        for a, d in re.findall(
            r"audit records lost: (\d+) allowed, (\d+) denied decisions"
            r" \(worker \d+ \(pid \d+\) exited",
            stderr,
        )
    )



def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Summed RSS (KiB) of the supervisor and its workers every 0.25 s."""

    def __init__(self, supervisor: int) -> None:
        super().__init__(daemon=True, name="rss")
        self.supervisor = supervisor
        self.stop = threading.Event()
        self.peak_total = 0
        self.peak_process = 0

    def sample(self) -> int:
        pids = [self.supervisor, *worker_pids(self.supervisor).values()]
        sizes = [rss_kb(p) for p in pids]
        total = sum(sizes)
        self.peak_total = max(self.peak_total, total)
        self.peak_process = max(self.peak_process, *sizes)
        return total

    def run(self) -> None:
        while not self.stop.wait(0.25):
            self.sample()


# --------------------------------------------------------------------------- worker kills


class WorkerKiller(threading.Thread):
    """SIGKILL one worker every ``every`` seconds (alternating), and see the supervisor restart it."""

    def __init__(self, supervisor: int, workers: int, every: float) -> None:
        super().__init__(daemon=True, name="killer")
        self.supervisor, self.workers, self.every = supervisor, workers, every
        self.stop = threading.Event()
        self.kills: list[tuple[int, int]] = []  # (index, pid)
        self.restarted = 0
        self.not_found = 0

    def run(self) -> None:
        while not self.stop.wait(self.every):
            index = len(self.kills) % self.workers
            pid = worker_pids(self.supervisor).get(index)
            if pid is None:
                self.not_found += 1
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                self.not_found += 1
                continue
            self.kills.append((index, pid))
            deadline = time.monotonic() + 15.0
            while time.monotonic() < deadline and not self.stop.is_set():
                new = worker_pids(self.supervisor).get(index)
                if new is not None and new != pid:
                    self.restarted += 1
                    break
                time.sleep(0.1)


# --------------------------------------------------------------------------- slow streams


ROUNDS = ("oversize", "budget", "timeout")


class SlowStreams(threading.Thread):
    """Round after round of unfinished Check streams straight to the worker ports."""

    def __init__(
        self,
        ports: list[int],
        streams: int = 16,  # per round (the ``budget`` round opens 2x)
        max_message: int = 256 * 1024,  # the service's max_message_bytes
        per_connection: int = 4 * 1024 * 1024,  # its max_buffered_bytes_per_connection
        body_timeout: float = 5.0,
        pause: float = 0.5,  # between rounds
    ) -> None:
        super().__init__(daemon=True, name="slow-streams")
        self.ports, self.streams, self.max_message = ports, streams, max_message
        self.per_connection, self.body_timeout, self.pause = per_connection, body_timeout, pause
        self.stop = threading.Event()
        self.outcomes: Counter[str] = Counter()
        self.rounds: Counter[str] = Counter()

    def _plan(self, kind: str) -> tuple[int, int, int]:
        """(streams, bytes declared in the gRPC frame, bytes sent) for a round of ``kind``."""
        if kind == "timeout":
            return self.streams, self.max_message // 2, 8 * 1024
        if kind == "budget":
            n = 2 * self.streams
            each = max(self.per_connection // self.streams, 64 * 1024)
            each = min(each, self.max_message - 1024)
            return n, each + 512, each
        return self.streams, self.max_message + 1024, 16 * 1024  # oversize

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            kind = ROUNDS[i % len(ROUNDS)]
            port = self.ports[i % len(self.ports)]
            i += 1
            self.round(kind, port)
            self.stop.wait(self.pause)

    def round(self, kind: str, port: int) -> None:
        n, declared, sent = self._plan(kind)
        try:
            client = RawH2(LOOPBACK, port, timeout=5.0)
        except OSError:
            self.outcomes["connect_failed"] += 1  # a worker being restarted
            return
        self.rounds[kind] += 1
        with client:
            head = b"\x00" + declared.to_bytes(4, "big")
            body = head + bytes(sent - 5)
            ids = []
            try:
                for _ in range(min(n, client.max_streams)):
                    if client.closed:
                        break
                    sid = client.open()
                    ids.append(sid)
                    client.send(sid, body, timeout=0.5)
                    client.pump(0.0)
            except OSError:
                pass
            states = [client.streams[s] for s in ids]
            client.wait(lambda: all(s.finished for s in states), self.body_timeout + 5.0)
            for s in states:
                if s.ended and s.grpc_status == 0 and s.message():
                    self.outcomes["refused_deny"] += 1
                elif s.reset is not None:
                    self.outcomes["refused_reset"] += 1
                elif s.ended:
                    self.outcomes["answered_other"] += 1
                elif client.closed:
                    self.outcomes["connection_lost"] += 1  # the worker was killed under it
                else:
                    self.outcomes["still_open"] += 1  # no bound tripped in time: a failure

    @property
    def refused(self) -> int:
        return self.outcomes["refused_deny"] + self.outcomes["refused_reset"]


# --------------------------------------------------------------------------- the audit log


@dataclass
class LogScan:
    files: int = 0
    records: int = 0  # decision records
    by_reason: Counter[str] = field(default_factory=Counter)
    slow_errors: Counter[str] = field(default_factory=Counter)  # the refusals' ``error`` texts
    events: Counter[str] = field(default_factory=Counter)
    lost_counted: int = 0
    decision_ids: set[str] = field(default_factory=set)
    torn: list[str] = field(default_factory=list)

    @property
    def slow_records(self) -> int:
        return sum(self.by_reason[r] for r in SLOW_REASONS)


def scan_log(path: Path) -> LogScan:
    """Every line of the rotated set, oldest first; a torn or unreadable line is reported."""
    out = LogScan()
    for p in rotated_files(path):
        out.files += 1
        with p.open("rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    out.torn.append(f"{p}:{n}: incomplete last line (no newline)")
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    out.torn.append(f"{p}:{n}: not valid JSON")
                    continue
                if not isinstance(rec, dict):
                    out.torn.append(f"{p}:{n}: not a JSON object")
                elif "decision_id" in rec:
                    out.records += 1
                    reason = str(rec.get("reason"))
                    out.by_reason[reason] += 1
                    if reason in SLOW_REASONS:
                        out.slow_errors[str(rec.get("error"))[:72]] += 1
                    out.decision_ids.add(str(rec["decision_id"]))
                else:
                    event = str(rec.get("event"))
                    out.events[event] += 1
                    if event == LOST_EVENT:
                        out.lost_counted += int(rec.get("allowed") or 0) + int(rec.get("denied") or 0)
    return out


def verify_log(path: Path) -> tuple[bool, str]:
    """``extauthz audit verify PATH.N ... PATH`` (the head beside it): passed, and what it said.
    A chain that does not start at seq 1 (rotation deleted older files) does not pass."""
    files = [str(p) for p in rotated_files(path)]
    proc = subprocess.run(
        [sys.executable, "-m", "extauthz", "audit", "verify", *files],
        capture_output=True, text=True, timeout=600, check=False,
    )
    said = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0 and "starts at seq" not in said, said[-500:]
