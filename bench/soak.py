"""Soak: a bounded load through the real Envoy with hot policy reloads, trust-bundle rotations,
slow-stream attackers and worker SIGKILLs during it.

    python bench/soak.py [--seconds 60] [--clients 4] [--reload-every 2.0] [--rotate-every 3.0]
                         [--workers 2] [--kill-every 8.0] [--slow-streams 16] [--audit-max-bytes B]

Starts the dev PKI, an echo upstream, ``extauthz serve --workers 2`` (config ``workers: 2``,
every worker's port an Envoy endpoint) and Envoy (mTLS) on loopback. Client threads keep one
HTTPS connection each and cycle through probes whose correct answer is fixed: the frontend's GET
/api/items (allow), its GET /api/admin (deny) and the intruder's GET /api/items (deny). Every
``--reload-every`` seconds the policy directory changes between two sets that give the probes the
same answers (the second adds unrelated rules), so a reload must never change a decision. The
service verifies peers against ``--trust-bundle example.org=FILE`` (the dev CA); every
``--rotate-every`` seconds FILE is replaced atomically (write + rename) by the dev CA plus a
second CA, then by the dev CA alone again: the bundle watchers reload it, and no probe's answer
may change. Meanwhile (bench/soak_clients.py):

- a slow-stream client connects straight to the workers' ports and opens many Check streams with
  partial bodies it never ends (round after round: body timeout, per-connection budget, oversize
  frame), so the resource bounds trip while Envoy's checks keep being answered;
- every ``--kill-every`` seconds one worker is SIGKILLed (alternating; found as the supervisor's
  children in /proc) and the supervisor restarts it. Checks in flight on it fail: Envoy answers
  403 on its own (``denied_on_error``), never 2xx;
- the audit log rotates every ``--audit-max-bytes`` (``audit_backups`` high enough to keep every
  file).

At the end the service is stopped gracefully and the report says:

- checks served (Envoy's ext_authz ok + denied) and requests sent;
- wrong decisions: failed open (a deny probe answered 2xx) and wrong denies (an allow probe denied
  by extauthz itself: a 403 carrying ``x-extauthz-decision-id``); a 403 without it is Envoy's own
  fail-closed answer (deadline, connection loss, a killed worker), reported as ``denied_on_error``;
- audit: decision records across the log and its rotated files, split into Envoy's checks and the
  slow streams' refusals (reasons ``resource_limit``/``malformed_check_request``); lost counted
  (``audit_records_lost`` events, e.g. a killed worker's records still in its memory); lost
  uncounted = checks served - Envoy's records - lost counted (when > 0, answers left no trace);
  every decision id a client saw on a deny must be in the log (up to the counted losses); torn
  lines fail the soak; ``extauthz audit verify`` over the rotated set with the head must pass and
  the chain must start at seq 1;
- worker kills and restarts; slow streams refused (answered with a deny or reset) and still open
  at their round's end (must be 0);
- memory: the service's RSS (supervisor + workers) after warm-up, peak and at the end;
- bundle rotations requested and applied (reloads the service logged whose CA count differs from
  the previous one: 1 -> 2 -> 1 ...; the workers' lines interleave, so this is approximate).

Results: JSON on stdout (a summary line on stderr) and in bench/results/soak.json. Exit 1 unless
0 wrong, 0 failed open, 0 lost uncounted, no torn line, verify passed, no slow stream left open.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from soak_clients import (  # noqa: E402
    RssSampler,
    SlowStreams,
    WorkerKiller,
    free_ports,
    killed_worker_losses,
    scan_log,
    verify_log,
)

from extauthz.devenv.ca import make_ca  # noqa: E402
from extauthz.devenv.client import client_context  # noqa: E402
from extauthz.devenv.echo import EchoServer  # noqa: E402
from extauthz.devenv.net import LOOPBACK  # noqa: E402
from extauthz.devenv.pki import build_pki  # noqa: E402
from extauthz.devenv.processes import EnvoyProcess, ExtauthzProcess, grpc_serving  # noqa: E402

RESULTS = REPO / "bench" / "results"

BASE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-api, namespace: shop}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/api/admin", "/api/admin/*"]}}]
"""


def extra_rules(n: int) -> str:
    """An unrelated policy: it changes the set without changing any probe's answer."""
    rules = "".join(
        f'  - from: [{{source: {{principals: ["example.org/ns/shop/sa/w{i}"]}}}}]\n'
        f'    to: [{{operation: {{paths: ["/svc/{i}"]}}}}]\n'
        for i in range(n)
    )
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: extra, namespace: shop}\nspec:\n  action: ALLOW\n  rules:\n" + rules
    )


# (client name, path, should it be allowed?)
PROBES = [
    ("frontend", "/api/items", True),
    ("frontend", "/api/admin", False),
    ("intruder", "/api/items", False),
]


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rotations_applied(stderr: str) -> tuple[int, int]:
    """(bundle reloads logged, those that changed the CA count): the rotations the service saw."""
    counts = [int(m) for m in re.findall(r"trust bundles reloaded: .*'x509_authorities': (\d+)", stderr)]
    changes = sum(1 for a, b in zip([1, *counts], counts, strict=False) if a != b)
    return len(counts), changes


class Client(threading.Thread):
    def __init__(
        self, port: int, pki: Any, who: str, probes: list[tuple[str, bool]], stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        files = pki.files[who]
        self.ctx = client_context(pki.ca_file, files.chain, files.key)
        self.port, self.who, self.probes, self.stop = port, who, probes, stop
        self.outcomes: Counter[str] = Counter()
        self.deny_ids: list[str] = []  # x-extauthz-decision-id of the denies extauthz answered

    def _conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(LOOPBACK, self.port, timeout=5, context=self.ctx)

    def run(self) -> None:
        conn = self._conn()
        i = 0
        while not self.stop.is_set():
            path, should_allow = self.probes[i % len(self.probes)]
            i += 1
            try:
                conn.request("GET", path, headers={"Host": "api.shop.svc"})
                resp = conn.getresponse()
                resp.read()
                status, decision_id = resp.status, resp.getheader("x-extauthz-decision-id")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._conn()
                self.outcomes["connection_error"] += 1
                continue
            if decision_id is not None and not 200 <= status < 300:
                self.deny_ids.append(decision_id)
            if 200 <= status < 300:
                self.outcomes["allowed_correctly" if should_allow else "failed_open"] += 1
            elif not should_allow:
                self.outcomes["denied_correctly"] += 1
            elif decision_id is not None:
                self.outcomes["wrong_deny"] += 1
            else:
                self.outcomes["denied_on_error"] += 1
        conn.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--reload-every", type=float, default=2.0)
    ap.add_argument("--rotate-every", type=float, default=3.0, help="trust-bundle rotation period (s)")
    ap.add_argument("--extra-rules", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=0.5, help="Envoy's ext_authz deadline (s)")
    ap.add_argument("--workers", type=int, default=2, help="extauthz serve --workers (config workers:)")
    ap.add_argument(
        "--kill-every", type=float, default=8.0,
        help="SIGKILL one worker every this many seconds (0: never; the supervisor gives up after "
        "10 restarts a minute, so at least 6.5)",
    )
    ap.add_argument("--slow-streams", type=int, default=16, help="unfinished streams per round (0: none)")
    ap.add_argument("--body-timeout", type=float, default=2.0, help="the service's body_timeout (s)")
    ap.add_argument("--audit-max-bytes", type=int, default=4 * 1024 * 1024, help="rotate the log at")
    args = ap.parse_args(argv)
    args.seconds = min(args.seconds, 900.0)  # always bounded
    if args.kill_every and (args.workers < 2 or args.kill_every * 10 < min(args.seconds, 60.0)):
        ap.error("--kill-every needs --workers >= 2 and at most 10 kills within a minute")
    return args


def service_config(args: argparse.Namespace, path: Path) -> Path:
    path.write_text(
        f"workers: {args.workers}\n"
        f"audit_max_bytes: {args.audit_max_bytes}\n"
        "audit_backups: 1000\n"  # keep every rotated file: the count goes across all of them
        f"body_timeout: {args.body_timeout}\n"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="extauthz-soak-"))
    pki = build_pki(work / "pki")
    policies = work / "policies"
    policies.mkdir()
    (policies / "base.yaml").write_text(BASE)
    extra = extra_rules(args.extra_rules)
    bundle = work / "bundle" / "example.org.pem"
    bundle.parent.mkdir()
    single = pki.ca.cert_pem
    double = pki.ca.cert_pem + make_ca("example.org").cert_pem
    bundle.write_bytes(single)
    config = service_config(args, work / "extauthz.yaml")
    with EchoServer() as echo:
        authz = ExtauthzProcess(
            policies, work / "extauthz",
            extra_args=["--config", str(config), "--trust-bundle", f"example.org={bundle}"],
        )
        authz.port = free_ports(args.workers)
        ports = [authz.port + i for i in range(args.workers)]
        slow = SlowStreams(ports, streams=args.slow_streams, body_timeout=args.body_timeout)
        envoy: EnvoyProcess | None = None
        try:
            authz.start(timeout=60)
            deadline = time.monotonic() + 60
            while not all(grpc_serving(f"{LOOPBACK}:{p}") for p in ports):
                if time.monotonic() > deadline:
                    raise TimeoutError("workers not SERVING after 60 s")
                time.sleep(0.2)
            # Envoy's ports are picked once every worker listens: never one of theirs.
            envoy = EnvoyProcess(
                work / "envoy", upstream=echo.address,
                authz_endpoints=[f"{LOOPBACK}:{p}" for p in ports],
                tls=pki.envoy_tls(), context_extensions={"namespace": "shop"}, timeout_s=args.timeout,
            ).start()
            assert authz.pid is not None
            sampler = RssSampler(authz.pid)
            killer = WorkerKiller(authz.pid, args.workers, args.kill_every)
            stop = threading.Event()
            clients = []
            for n in range(args.clients):
                who = "intruder" if n % 3 == 2 else "frontend"
                probes = [(p, ok) for w, p, ok in PROBES if w == who]
                clients.append(Client(envoy.listen_port, pki, who, probes, stop))
            for c in clients:
                c.start()
            time.sleep(min(2.0, args.seconds / 4))  # warm-up
            rss_start = sampler.sample()
            sampler.start()
            if args.kill_every:
                killer.start()
            if args.slow_streams:
                slow.start()
            started = time.monotonic()
            reloads = rotations = 0
            next_reload, next_rotate = started + args.reload_every, started + args.rotate_every
            while True:
                now = time.monotonic()
                if now - started >= args.seconds:
                    break
                if now >= next_reload:
                    extra_file = policies / "extra.yaml"
                    if extra_file.exists():
                        extra_file.unlink()
                    else:
                        extra_file.write_text(extra)
                    reloads += 1
                    next_reload += args.reload_every
                if now >= next_rotate:
                    rotations += 1
                    write_atomically(bundle, double if rotations % 2 else single)
                    next_rotate += args.rotate_every
                time.sleep(max(0.0, min(next_reload, next_rotate, started + args.seconds) - time.monotonic()))
            killer.stop.set()
            slow.stop.set()
            if killer.is_alive():
                killer.join(20)
            if slow.is_alive():
                slow.join(args.body_timeout + 15)
            stop.set()
            for c in clients:
                c.join(10)
            elapsed = time.monotonic() - started
            rss_end = sampler.sample()
            sampler.stop.set()
            stats = {
                k.rsplit(".", 1)[1]: v
                for k, v in envoy.stats().items()
                if k.startswith("http.ingress_http.ext_authz.extauthz.")
            }
        finally:
            if envoy is not None:
                envoy.stop()
            exit_code = authz.stop(timeout=60)
    outcomes: Counter[str] = Counter()
    deny_ids: list[str] = []
    for c in clients:
        outcomes.update(c.outcomes)
        deny_ids += c.deny_ids
    served = stats.get("ok", 0) + stats.get("denied", 0)
    scan = scan_log(authz.audit_log)
    verified, verify_said = verify_log(authz.audit_log)
    stderr = authz.stderr_text()
    bundle_reloads, bundle_applied = rotations_applied(stderr)
    envoy_records = scan.records - scan.slow_records
    lost_uncounted = max(0, served - envoy_records - scan.lost_counted)
    lost_by_kills = killed_worker_losses(stderr)
    ids_missing = sum(1 for d in deny_ids if d not in scan.decision_ids)
    starts = 1 + args.workers + killer.restarted  # the supervisor's load and each worker start
    report = {
        "seconds": round(elapsed, 1),
        "clients": args.clients,
        "workers": args.workers,
        "requests": sum(outcomes.values()),
        "checks_served": served,
        "checks_per_s": round(served / elapsed, 1) if elapsed else 0,
        "reloads_requested": reloads,
        "reloads_applied": (stderr.count("policies loaded: generation") - starts) // args.workers,
        "reloads_refused": stderr.count("policy reload refused"),
        "bundle_rotations_requested": rotations,
        "bundle_rotations_applied": bundle_applied,
        "bundle_reloads": bundle_reloads,
        "bundle_reloads_refused": stderr.count("not reloaded, keeping the last good one"),
        "outcomes": dict(outcomes),
        "failed_open": outcomes["failed_open"],
        "wrong_decisions": outcomes["failed_open"] + outcomes["wrong_deny"],
        "envoy_ext_authz": {k: v for k, v in stats.items() if v},
        "worker_kills": len(killer.kills),
        "worker_restarts_seen": killer.restarted,
        "slow_stream_rounds": dict(slow.rounds),
        "slow_streams": dict(slow.outcomes),
        "slow_streams_refused": slow.refused,
        "slow_streams_left_open": slow.outcomes["still_open"],
        "audit_files": scan.files,
        "audit_records": scan.records,
        "audit_records_envoy": envoy_records,
        "audit_records_slow_streams": scan.slow_records,
        "audit_records_by_reason": dict(scan.by_reason.most_common()),
        "audit_slow_stream_refusals": dict(scan.slow_errors.most_common()),
        "audit_events": dict(scan.events),
        "audit_records_lost_counted": scan.lost_counted,
        "audit_records_lost_counted_by_kills": lost_by_kills,
        "audit_records_lost_uncounted": lost_uncounted,
        "audit_records_without_envoy_answer": max(0, envoy_records + scan.lost_counted - served),
        "client_deny_ids": len(deny_ids),
        "client_deny_ids_missing_from_log": ids_missing,
        "audit_torn_lines": scan.torn[:10],
        "audit_verify_ok": verified,
        "audit_verify": verify_said,
        "service_exit_code": exit_code,
        "rss_kb_start": rss_start,
        "rss_kb_peak": sampler.peak_total,
        "rss_kb_peak_one_process": sampler.peak_process,
        "rss_kb_end": rss_end,
        "rss_growth_kb": rss_end - rss_start,
    }
    failures = [
        name
        for name, bad in (
            ("wrong decisions", report["wrong_decisions"]),
            ("failed open", report["failed_open"]),
            ("records lost uncounted", lost_uncounted),
            ("deny ids missing beyond the counted losses", max(0, ids_missing - scan.lost_counted)),
            ("records lost, not with a killed worker", max(0, scan.lost_counted - lost_by_kills)),
            ("torn audit lines", len(scan.torn)),
            ("audit verify failed", not verified),
            ("slow streams left open", slow.outcomes["still_open"]),
            ("service exit code", exit_code != 0),
            ("no checks served", served == 0),
        )
        if bad
    ]
    report["failures"] = failures
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        f"soak: {served} checks, {scan.records} records ({envoy_records} Envoy's, "
        f"{scan.slow_records} slow streams'), lost counted {scan.lost_counted}, "
        f"lost uncounted {lost_uncounted}, wrong {report['wrong_decisions']}, "
        f"fail-open {report['failed_open']}, kills {len(killer.kills)}, "
        f"slow streams refused {slow.refused}, RSS peak {sampler.peak_total / 1024:.1f} MiB; "
        + ("OK" if not failures else "FAILED: " + ", ".join(failures)),
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
