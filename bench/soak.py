"""Soak: a bounded load through the real Envoy with hot policy reloads and trust-bundle
rotations during it.

    python bench/soak.py [--seconds 60] [--clients 4] [--reload-every 2.0] [--rotate-every 3.0]

Starts the dev PKI, an echo upstream, ``extauthz serve`` and Envoy (mTLS) on loopback. Client
threads keep one HTTPS connection each and cycle through probes whose correct answer is fixed:
the frontend's GET /api/items (allow), its GET /api/admin (deny) and the intruder's GET
/api/items (deny). Every ``--reload-every`` seconds the policy directory changes between two
sets that give the probes the same answers (the second adds unrelated rules), so a reload must
never change a decision. The service verifies peers against ``--trust-bundle example.org=FILE``
(the dev CA); every ``--rotate-every`` seconds FILE is replaced atomically (write + rename) by
the dev CA plus a second CA, then by the dev CA alone again: the bundle watcher reloads it, and
no probe's answer may change. At the end the service is stopped gracefully and the report says:

- checks served (Envoy's ext_authz ok + denied) and requests sent;
- wrong decisions: failed open (a deny probe answered 2xx) and wrong denies (an allow probe denied
  by extauthz itself: a 403 carrying ``x-extauthz-decision-id``); a 403 without it is Envoy's own
  fail-closed answer (deadline, connection loss), reported as ``denied_on_error``;
- audit records: decision records across the log and its rotated files; lost: checks served
  minus those records, plus the losses the log itself states (``audit_records_lost`` events);
  torn lines are reported and fail the soak;
- memory: the service's RSS after warm-up and at the end;
- bundle rotations requested and applied (reloads the service logged whose CA count differs from
  the previous one: 1 -> 2 -> 1 ...).

Results: JSON on stdout and in bench/results/soak.json.
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

from extauthz.decision.audit.files import count_records  # noqa: E402
from extauthz.devenv.ca import make_ca  # noqa: E402
from extauthz.devenv.client import client_context  # noqa: E402
from extauthz.devenv.echo import EchoServer  # noqa: E402
from extauthz.devenv.net import LOOPBACK  # noqa: E402
from extauthz.devenv.pki import build_pki  # noqa: E402
from extauthz.devenv.processes import EnvoyProcess, ExtauthzProcess  # noqa: E402

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


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Client(threading.Thread):
    def __init__(
        self, port: int, pki: Any, who: str, probes: list[tuple[str, bool]], stop: threading.Event
    ) -> None:
        super().__init__(daemon=True)
        files = pki.files[who]
        self.ctx = client_context(pki.ca_file, files.chain, files.key)
        self.port, self.who, self.probes, self.stop = port, who, probes, stop
        self.outcomes: Counter[str] = Counter()

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
                status, by_extauthz = resp.status, resp.getheader("x-extauthz-decision-id") is not None
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self._conn()
                self.outcomes["connection_error"] += 1
                continue
            if 200 <= status < 300:
                self.outcomes["allowed_correctly" if should_allow else "failed_open"] += 1
            elif not should_allow:
                self.outcomes["denied_correctly"] += 1
            elif by_extauthz:
                self.outcomes["wrong_deny"] += 1
            else:
                self.outcomes["denied_on_error"] += 1
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--reload-every", type=float, default=2.0)
    ap.add_argument("--rotate-every", type=float, default=3.0, help="trust-bundle rotation period (s)")
    ap.add_argument("--extra-rules", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=0.5, help="Envoy's ext_authz deadline (s)")
    args = ap.parse_args(argv)
    args.seconds = min(args.seconds, 900.0)  # always bounded

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
    with EchoServer() as echo:
        authz = ExtauthzProcess(
            policies, work / "extauthz", extra_args=["--trust-bundle", f"example.org={bundle}"]
        ).start()
        envoy = EnvoyProcess(
            work / "envoy", upstream=echo.address, authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(), context_extensions={"namespace": "shop"}, timeout_s=args.timeout,
        ).start()
        try:
            stop = threading.Event()
            clients = []
            for n in range(args.clients):
                who = "intruder" if n % 3 == 2 else "frontend"
                probes = [(p, ok) for w, p, ok in PROBES if w == who]
                clients.append(Client(envoy.listen_port, pki, who, probes, stop))
            for c in clients:
                c.start()
            time.sleep(min(2.0, args.seconds / 4))  # warm-up
            assert authz.pid is not None
            rss_start = rss_kb(authz.pid)
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
            rss_end = rss_kb(authz.pid)
            stop.set()
            for c in clients:
                c.join(10)
            elapsed = time.monotonic() - started
            stats = {
                k.rsplit(".", 1)[1]: v
                for k, v in envoy.stats().items()
                if k.startswith("http.ingress_http.ext_authz.extauthz.")
            }
        finally:
            envoy.stop()
            authz.stop()
        outcomes: Counter[str] = Counter()
        for c in clients:
            outcomes.update(c.outcomes)
        served = stats.get("ok", 0) + stats.get("denied", 0)
        audit = count_records(authz.audit_log)
        audit_lines = audit.decisions
        stderr = authz.stderr_text()
        bundle_reloads, bundle_applied = rotations_applied(stderr)
        report = {
            "seconds": round(elapsed, 1),
            "clients": args.clients,
            "requests": sum(outcomes.values()),
            "checks_served": served,
            "checks_per_s": round(served / elapsed, 1) if elapsed else 0,
            "reloads_requested": reloads,
            "reloads_applied": stderr.count("policies loaded: generation") - 1,
            "reloads_refused": stderr.count("policy reload refused"),
            "bundle_rotations_requested": rotations,
            "bundle_rotations_applied": bundle_applied,
            "bundle_reloads": bundle_reloads,
            "bundle_reloads_refused": stderr.count("not reloaded, keeping the last good one"),
            "outcomes": dict(outcomes),
            "failed_open": outcomes["failed_open"],
            "wrong_decisions": outcomes["failed_open"] + outcomes["wrong_deny"],
            "envoy_ext_authz": {k: v for k, v in stats.items() if v},
            "audit_records": audit_lines,
            "audit_records_lost": max(0, served - audit_lines) + audit.lost,
            "audit_records_lost_counted": audit.lost,
            "audit_torn_lines": audit.torn[:10],
            "rss_kb_start": rss_start,
            "rss_kb_end": rss_end,
            "rss_growth_kb": rss_end - rss_start,
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    ok = (
        report["wrong_decisions"] == 0
        and report["audit_records_lost"] == 0
        and not report["audit_torn_lines"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
