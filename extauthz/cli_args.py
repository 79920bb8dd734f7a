"""The ``extauthz`` command line's grammar: subcommands, flags, defaults and help."""

from __future__ import annotations

import argparse

from extauthz import __version__, compiled


def parser() -> argparse.ArgumentParser:
    """Every subcommand, its flags and their help (cli.py runs them)."""
    p = argparse.ArgumentParser(
        prog="extauthz", description="Zero-trust Envoy external authorization service."
    )
    p.add_argument(
        "--version", action="version", version=f"extauthz {__version__} ({compiled.summary()})"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the ext_authz gRPC service")
    s.add_argument("--policies", metavar="DIR", help="policy directory (default ./policies)")
    s.add_argument("--listen", metavar="ADDR", help="HOST:PORT or unix:/PATH (127.0.0.1:9191)")
    s.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="serving processes (default 1); worker i listens on PORT+i (unix: PATH.i)",
    )
    s.add_argument(
        "--transport",
        choices=["grpcio", "h2corn"],
        help="gRPC server: h2corn (default; Rust HTTP/2, ASGI) or grpcio (the fallback)",
    )
    s.add_argument("--metrics", metavar="ADDR", help="HOST:PORT for Prometheus /metrics")
    s.add_argument("--audit-log", metavar="PATH", help="JSON Lines audit log; - is stdout")
    s.add_argument(
        "--trust-bundle", action="append", metavar="TD=PATH", help="trust bundle (repeatable)"
    )
    s.add_argument(
        "--trusted-proxy", action="append", metavar="CIDR", help="trusted XFCC proxy (repeatable)"
    )
    s.add_argument(
        "--bind-token-to-peer",
        action="store_true",
        default=None,
        help="require a token's sub to be the verified peer's SPIFFE ID",
    )
    s.add_argument(
        "--workload-api",
        metavar="ADDR",
        help="SPIFFE Workload API socket for trust bundles (default $SPIFFE_ENDPOINT_SOCKET)",
    )
    s.add_argument("--root-namespace", metavar="NS", help="Istio root namespace (istio-system)")
    s.add_argument("--threads", type=int, metavar="N", help="gRPC handler threads per worker")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    s.add_argument("--config", metavar="FILE", help="YAML file of settings (flags win)")

    c = sub.add_parser("check", help="decide one CheckRequest (proto3 JSON) offline")
    c.add_argument("--policies", metavar="DIR", default="./policies")
    c.add_argument("--trust-bundle", action="append", default=[], metavar="TD=PATH")
    c.add_argument("--root-namespace", metavar="NS", default="istio-system")
    c.add_argument(
        "--explain", action="store_true", help="add the evaluation trace (every rule in scope)"
    )
    c.add_argument("request", metavar="REQUEST", help="file with a CheckRequest in JSON, - for stdin")

    lint = sub.add_parser("lint", help="check a policy directory: errors and warnings")
    lint.add_argument("directory", metavar="DIR")
    lint.add_argument("--strict", action="store_true", help="warnings are errors too")
    lint.add_argument("--format", choices=["text", "json"], default="text")
    lint.add_argument("--root-namespace", metavar="NS", default="istio-system")
    lint.add_argument(
        "--envoy-config", metavar="FILE", help="Envoy config whose routes' context_extensions "
        "selectors must be able to match"
    )

    t = sub.add_parser("test", help="run request fixtures with expected decisions against policies")
    t.add_argument("directory", metavar="DIR")
    t.add_argument("cases", metavar="CASES.yaml")
    t.add_argument("--format", choices=["text", "json"], default="text")
    t.add_argument("--root-namespace", metavar="NS", default="istio-system")

    e = sub.add_parser("envoy-config", help="print the Envoy configuration to use with extauthz")
    e.add_argument(
        "--endpoint",
        action="append",
        metavar="ADDR",
        help="extauthz address(es) as Envoy should reach them (default 127.0.0.1:9191)",
    )
    e.add_argument("--timeout", type=float, default=0.25, metavar="SECONDS",
                   help="deadline of one check (0.25)")
    e.add_argument("--status-on-error", type=int, default=403, metavar="CODE",
                   help="HTTP status when extauthz cannot answer in time (403)")
    e.add_argument("--no-health-check", action="store_true",
                   help="leave out the cluster's active gRPC health check")
    e.add_argument("--context-extension", action="append", default=[], metavar="KEY=VALUE",
                   help="sent with every check of the route, e.g. namespace=shop (repeatable)")
    e.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="list N endpoints per --endpoint, as `serve --workers N` listens (PORT+i, PATH.i)",
    )
    e.add_argument(
        "--grpc-client",
        choices=["envoy_grpc", "google_grpc"],
        default="envoy_grpc",
        help="Envoy's gRPC client for the check (default envoy_grpc: cheaper, see bench/README.md)",
    )
    e.add_argument("--bootstrap", action="store_true", help="print a complete Envoy bootstrap")
    e.add_argument("--listen-address", default="127.0.0.1", help="with --bootstrap")
    e.add_argument("--listen-port", type=int, default=10000, help="with --bootstrap")
    e.add_argument("--upstream", default="127.0.0.1:8080", help="with --bootstrap: HOST:PORT")
    e.add_argument("--admin-port", type=int, default=9901, help="with --bootstrap")

    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", required=True)
    av = asub.add_parser(
        "verify",
        help="check the hash chain of audit log files; report the first broken record",
        description="Check the hash chain of audit log files, given oldest first "
        "(PATH.5 ... PATH.1 PATH), up to the head anchored in PATH.head. Exit 0 when intact, "
        "1 at the first broken, missing or torn record (or a missing/mismatched head).",
    )
    av.add_argument("files", nargs="+", metavar="FILE", help="audit log files, oldest first")
    av.add_argument("--hmac-key-file", metavar="FILE", help="the key the records were sealed with")
    av.add_argument(
        "--head", metavar="FILE", help="the anchored head (default: PATH.head beside the newest file)"
    )
    av.add_argument(
        "--no-head",
        action="store_true",
        help="check the chain only (a collector's copy of --audit-log -, or older files alone)",
    )

    r = sub.add_parser(
        "replay",
        help="decide the requests of audit logs again against a candidate policy set",
        description="Decide every recorded decision of the audit logs again, from each record's "
        "input, against the policies in DIR; print what stays, what flips and what cannot be "
        "decided. Exit 0 when nothing flips, 1 when something does, 2 on errors.",
    )
    r.add_argument("--policies", metavar="DIR", required=True, help="the candidate policy set")
    r.add_argument(
        "--trust-bundle", action="append", default=[], metavar="TD=PATH",
        help="accepted for symmetry with check; replay uses the recorded verification result",
    )
    r.add_argument("--root-namespace", metavar="NS", default="istio-system")
    r.add_argument("--format", choices=["text", "json"], default="text")
    r.add_argument(
        "logs", nargs="+", metavar="AUDIT_LOG",
        help="audit log files; rotated siblings (PATH.1 ...) in any order",
    )

    h = sub.add_parser(
        "healthcheck", help="exit 0 when a running extauthz answers gRPC health SERVING"
    )
    h.add_argument("--address", default="127.0.0.1:9191", metavar="ADDR",
                   help="HOST:PORT or unix:/PATH of the service (127.0.0.1:9191)")
    h.add_argument("--service", default="", metavar="NAME",
                   help="health service name ('' is the whole server)")
    h.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")

    d = sub.add_parser("demo", help="run extauthz behind a real Envoy with mTLS on example policies")
    d.add_argument("--policies", metavar="DIR", default="./policies")
    d.add_argument("--workdir", metavar="DIR", default=".demo")
    d.add_argument("--port", type=int, default=10000, help="Envoy's HTTPS port")
    d.add_argument("--duration", type=float, default=0, help="stop after SECONDS (0: run until ^C)")
    return p
