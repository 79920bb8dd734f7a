"""The ``extauthz`` command line: serve, check, lint, test, replay, envoy-config, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from extauthz import reasons
from extauthz.cli_args import parser
from extauthz.decision.tracing import TracingError, config_from_env
from extauthz.identity.bundles import BundleError
from extauthz.logs import setup_logging
from extauthz.policy import PolicyError
from extauthz.settings import SettingsError, build_settings

EXIT_OK = 0
EXIT_DENIED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
    from extauthz.decision.audit.head import SUFFIX as HEAD_SUFFIX
    from extauthz.decision.audit.head import head_path
    from extauthz.decision.audit.shared import SUFFIX as OFFERED_SUFFIX

    # `audit verify audit.log*` also matches the log's head and counters files: they are not logs.
    files = _oldest_first([f for f in args.files if not f.endswith((HEAD_SUFFIX, OFFERED_SUFFIX))])
    given_heads = [f for f in args.files if f.endswith(HEAD_SUFFIX)]
    if not files:
        print("extauthz audit verify: no log file given", file=sys.stderr)
        return EXIT_USAGE
    current = [f for f in files if not f.rpartition(".")[2].isdigit()]  # not a rotated FILE.N
    default_head = given_heads[-1] if given_heads else head_path((current or files)[-1])
    head = None if args.no_head else (args.head or default_head)
    try:
        result = verify(files, Hasher.from_key_file(args.hmac_key_file), head)
    except (OSError, ValueError) as exc:
        print(f"extauthz audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not result.ok:
        print(f"BROKEN after {result.records} good records: {result.broken}")
        return EXIT_DENIED
    start = ""
    if result.first_seq is not None and result.first_seq != 1:
        start = f" (the chain starts at seq {result.first_seq}: give the older files to check it too)"
    anchored = f", ends at the head {head}" if head is not None else ", no head checked (--no-head)"
    print(f"OK: {result.records} records in {len(files)} file(s){anchored}{start}")
    return EXIT_OK


def _oldest_first(files: list[str]) -> list[str]:
    """One log's rotated set in chain order (``FILE.N`` ... ``FILE.1``, ``FILE``), however a shell
    glob listed it; files of different logs stay as given."""
    bases = {f.rpartition(".")[0] if f.rpartition(".")[2].isdigit() else f for f in files}
    if len(bases) != 1:
        return files
    return sorted(files, key=lambda f: -int(f.rpartition(".")[2]) if f not in bases else 0)


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
