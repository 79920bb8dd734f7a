"""The ``extauthz`` command line: serve, check, lint, test, replay, envoy-config, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from extauthz import __version__, reasons
from extauthz.decision.tracing import TracingError, config_from_env
from extauthz.identity.bundles import BundleError
from extauthz.logs import setup_logging
from extauthz.policy import PolicyError
from extauthz.settings import SettingsError, build_settings

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="extauthz", description="Zero-trust Envoy external authorization service."
    )
    p.add_argument("--version", action="version", version=f"extauthz {__version__}")
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
        "(PATH.5 ... PATH.1 PATH). Exit 0 when intact, 1 at the first broken record.",
    )
    av.add_argument("files", nargs="+", metavar="FILE", help="audit log files, oldest first")
    av.add_argument("--hmac-key-file", metavar="FILE", help="the key the records were sealed with")

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "check":
            return _check(args)
        if args.command == "lint":
            return _lint(args)
        if args.command == "test":
            return _test(args)
        if args.command == "envoy-config":
            return _envoy_config(args)
        if args.command == "audit":
            return _audit_verify(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "healthcheck":
            return _healthcheck(args)
        if args.command == "demo":
            from extauthz.devenv.demo import run_demo

            return run_demo(args.policies, args.workdir, args.port, args.duration)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        settings = build_settings(args.config, flags)
    except SettingsError as exc:
        print(f"extauthz serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    from extauthz.serving.main import serve

    try:
        config_from_env(os.environ)  # refused before any worker starts
        return serve(settings)
    except PolicyError as exc:
        logging.getLogger("extauthz").error("cannot load policies: %s", exc)
        print(f"extauthz serve: cannot load policies: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, BundleError, TracingError) as exc:
        print(f"extauthz serve: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _check(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
    from extauthz.envoy.request import from_check_request
    from extauthz.identity.bundles import BundleStore
    from extauthz.identity.resolver import IdentityContext
    from extauthz.pipeline import CheckCore
    from extauthz.policy import compile_policies, load_directory
    from extauthz.tools.explain import explain

    try:
        engine = compile_policies(load_directory(args.policies, root_namespace=args.root_namespace))
    except PolicyError as exc:
        print(f"extauthz check: cannot load policies: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        text = sys.stdin.read() if args.request == "-" else open(args.request).read()  # noqa: SIM115
        msg = json_format.Parse(text, ext.CheckRequest())
    except (OSError, json_format.ParseError, UnicodeDecodeError) as exc:
        print(f"extauthz check: cannot read the CheckRequest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        bundles = BundleStore.from_flags(args.trust_bundle)
        bundles.load()
    except (BundleError, OSError) as exc:
        print(f"extauthz check: cannot load trust bundles: {exc}", file=sys.stderr)
        return EXIT_USAGE
    core = CheckCore(lambda: engine, IdentityContext(bundles))
    _, _record, decision = core.check_message(msg)
    explanation = None
    if decision.reason in (reasons.ALLOWED, reasons.DENIED_BY_POLICY, reasons.NO_MATCH):
        explanation = explain(engine, from_check_request(msg), decision.identity)
    out: dict[str, Any] = {
        "allowed": decision.allowed,
        "status": decision.status,
        "reason": decision.reason,
        "policy": decision.policy,
        "rule": decision.rule,
        "headers": dict(decision.headers) if decision.allowed else {},
        # The request's x-request-id (null without one). No decision id: nothing is recorded.
        "request_id": from_check_request(msg).request_id or None,
    }
    if decision.error:
        out["error"] = decision.error
    if explanation is not None:
        out["explanation"] = explanation.summary
        out["failed"] = explanation.failed
        if args.explain:
            out["trace"] = [t.as_dict() for t in explanation.trace]
    else:
        out["explanation"] = f"denied before policy evaluation: {decision.reason}" + (
            f" ({decision.error})" if decision.error else ""
        )
    print(json.dumps(out, indent=2))
    return EXIT_OK if decision.allowed else EXIT_DENIED


def _audit_verify(args: argparse.Namespace) -> int:
    from extauthz.decision.audit import Hasher, verify

    try:
        result = verify(args.files, Hasher.from_key_file(args.hmac_key_file))
    except (OSError, ValueError) as exc:
        print(f"extauthz audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not result.ok:
        print(f"BROKEN after {result.records} good records: {result.broken}")
        return EXIT_DENIED
    start = ""
    if result.first_seq is not None and result.first_seq != 1:
        start = f" (the chain starts at seq {result.first_seq}: give the older files to check it too)"
    print(f"OK: {result.records} records in {len(args.files)} file(s){start}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from extauthz.tools.replay import run_replay

    return run_replay(
        args.policies, args.logs, trust_bundles=args.trust_bundle,
        root_namespace=args.root_namespace, fmt=args.format,
    )


def _lint(args: argparse.Namespace) -> int:
    from extauthz.tools.lint import ERROR, lint_directory

    findings = lint_directory(
        args.directory, root_namespace=args.root_namespace, envoy_config=args.envoy_config
    )
    errors = sum(f.severity == ERROR for f in findings)
    warnings = len(findings) - errors
    failed = errors > 0 or (args.strict and warnings > 0)
    if args.format == "json":
        print(json.dumps({
            "ok": not failed, "errors": errors, "warnings": warnings,
            "findings": [f.as_dict() for f in findings],
        }, indent=2))
    else:
        for f in findings:
            print(f)
        print(f"{errors} error(s), {warnings} warning(s)")
    return 1 if failed else EXIT_OK


def _test(args: argparse.Namespace) -> int:
    from extauthz.policy import compile_policies, load_directory
    from extauthz.tools.cases import CasesError, load_cases, run_cases

    try:
        engine = compile_policies(load_directory(args.directory, root_namespace=args.root_namespace))
        cases = load_cases(args.cases)
    except (PolicyError, CasesError) as exc:
        print(f"extauthz test: {exc}", file=sys.stderr)
        return EXIT_USAGE
    results = run_cases(engine, cases)
    failed = [r for r in results if not r.passed]
    if args.format == "json":
        print(json.dumps({
            "passed": len(results) - len(failed), "failed": len(failed),
            "results": [r.as_dict() for r in results],
        }, indent=2))
    else:
        for r in results:
            print(f"{'PASS' if r.passed else 'FAIL'}  {r.name}")
            for m in r.mismatches:
                print(f"      {m}  (policy {r.actual['policy']}, reason {r.actual['reason']})")
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else EXIT_OK


def _envoy_config(args: argparse.Namespace) -> int:
    from extauthz.settings import SettingsError, worker_addresses
    from extauthz.tools import envoy_config

    if args.workers < 1:
        print("extauthz envoy-config: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    extensions: dict[str, str] = {}
    for item in args.context_extension:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"extauthz envoy-config: --context-extension {item!r}: expected KEY=VALUE",
                  file=sys.stderr)
            return EXIT_USAGE
        extensions[key] = value
    try:
        endpoints = [
            addr
            for base in (args.endpoint or ["127.0.0.1:9191"])
            for addr in worker_addresses(base, args.workers)
        ]
        if args.bootstrap:
            cfg = envoy_config.bootstrap(
                listen_port=args.listen_port,
                listen_address=args.listen_address,
                upstream=args.upstream,
                authz_endpoints=endpoints,
                admin_port=args.admin_port,
                timeout_s=args.timeout,
                status_on_error=args.status_on_error,
                authz_health_check=not args.no_health_check,
                context_extensions=extensions or None,
                grpc_client=args.grpc_client,
            )
        else:
            cfg = envoy_config.snippet(
                endpoints,
                timeout_s=args.timeout,
                status_on_error=args.status_on_error,
                health_check=not args.no_health_check,
                context_extensions=extensions or None,
                grpc_client=args.grpc_client,
            )
    except (SettingsError, ValueError) as exc:
        print(f"extauthz envoy-config: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(envoy_config.render_yaml(cfg))
    return EXIT_OK


def _healthcheck(args: argparse.Namespace) -> int:
    """grpc.health.v1.Health/Check against a running service (the image's HEALTHCHECK)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = args.address
    if target.startswith("unix:") and not target.startswith("unix://"):
        target = "unix://" + target[len("unix:") :]
    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"extauthz healthcheck: {args.address}: {exc.code().name}", file=sys.stderr)
            return EXIT_DENIED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return EXIT_OK if resp.status == health_pb2.HealthCheckResponse.SERVING else EXIT_DENIED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
