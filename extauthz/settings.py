"""Service settings: defaults, then a ``--config`` YAML file, then command-line flags."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class SettingsError(ValueError):
    """A setting that cannot be used."""


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Settings:
    policies: str = "./policies"
    listen: str = "127.0.0.1:9191"
    workers: int = 1
    metrics: str | None = None
    audit_log: str = "-"
    trust_bundle: list[str] = field(default_factory=list)
    trusted_proxy: list[str] = field(default_factory=list)
    bind_token_to_peer: bool = False
    workload_api: str | None = None  # SPIFFE Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)
    root_namespace: str = "istio-system"
    # remote.ip / remoteIpBlocks: how many trusted proxies stand in front of Envoy, each
    # appending to x-forwarded-for. 0: the original client is the direct peer (XFF ignored).
    xff_num_trusted_hops: int = 0
    drain_seconds: float = 5.0
    # On SIGTERM: answer NOT_SERVING but keep deciding this long before closing the listener, so
    # health-checking Envoys move away first (set it above their health-check interval).
    drain_delay: float = 0.0
    threads: int = 4  # bench/README.md: 4 beat 16 and 1 with grpcio's sync server
    transport: str = "h2corn"  # bench/README.md: ~3x grpcio's checks/s; grpcio is the fallback
    log_level: str = "info"
    # Decision cache (0 entries: off). An entry also ends at the token's exp / the peer's notAfter.
    cache_size: int = 10000
    cache_ttl: float = 30.0
    # Audit log: size-based rotation (0: never), HMAC key for the hash chain, queue and overflow.
    audit_max_bytes: int = 100 * 1024 * 1024
    audit_backups: int = 5
    audit_hmac_key_file: str | None = None
    audit_queue: int = 65536
    audit_overflow: str = "drop-allowed"  # or "deny": fail closed when records cannot be written
    # Inputs never written into a record's `input` (header or claim names; docs/decisions.md).
    audit_input_exclude: list[str] = field(default_factory=list)
    # Headers set on allowed requests (client copies always replaced or removed): name -> field.
    identity_headers: dict[str, str] = field(default_factory=lambda: {"x-spiffe-id": "peer"})
    # Anomaly response: quarantine a caller with more than N denials in W seconds, for Q seconds.
    anomaly_quarantine: bool = False
    anomaly_max_denies: int = 20
    anomaly_window_seconds: float = 10.0
    anomaly_quarantine_seconds: float = 60.0
    anomaly_max_tracked: int = 100000
    # Resource bounds on the Check port (docs/security.md, "Resource bounds"): the gRPC message
    # cap (enforced while reading), the time the whole request body may take, HTTP/2 streams per
    # connection, and the bytes of unfinished request bodies held per connection and per process.
    max_message_bytes: int = 256 * 1024
    body_timeout: float = 5.0
    max_streams_per_connection: int = 100
    max_connections: int = 4096  # per worker process (h2corn; grpcio has no such bound)
    max_buffered_bytes_per_connection: int = 4 * 1024 * 1024
    max_buffered_bytes: int = 64 * 1024 * 1024
    # h2corn's I/O threads under SCHED_BATCH (Linux): they no longer preempt a check in progress
    # (serving/sched.py; ~25% more checks per core, bench/README.md).
    io_threads_batch: bool = True

    def validate(self) -> None:
        parse_listen(self.listen)
        if self.workers < 1:
            raise SettingsError("workers must be at least 1")
        if self.threads < 1:
            raise SettingsError("threads must be at least 1")
        hops = self.xff_num_trusted_hops
        if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
            raise SettingsError("xff_num_trusted_hops must be a whole number >= 0")
        if self.transport not in TRANSPORTS:
            raise SettingsError(f"transport {self.transport!r}: choose one of {', '.join(TRANSPORTS)}")
        if self.workers > 1:
            kind, where = parse_listen(self.listen)
            if kind == "tcp" and (where == 0 or int(where) + self.workers > 65536):
                raise SettingsError(
                    f"--workers {self.workers} needs a fixed --listen port with room for "
                    f"{self.workers} consecutive ports"
                )
        if self.cache_size < 0 or self.cache_ttl < 0:
            raise SettingsError("cache_size and cache_ttl must not be negative")
        if self.audit_max_bytes < 0 or self.audit_backups < 1 or self.audit_queue < 1:
            raise SettingsError("audit_max_bytes >= 0, audit_backups >= 1, audit_queue >= 1")
        if self.audit_overflow not in ("drop-allowed", "deny"):
            raise SettingsError("audit_overflow must be drop-allowed or deny")
        if self.audit_hmac_key_file:
            from extauthz.decision.audit import Hasher

            try:
                Hasher.from_key_file(self.audit_hmac_key_file)
            except (OSError, ValueError) as exc:
                raise SettingsError(f"audit_hmac_key_file: {exc}") from exc
        if not isinstance(self.audit_input_exclude, list) or not all(
            isinstance(n, str) and n.strip() for n in self.audit_input_exclude
        ):
            raise SettingsError("audit_input_exclude must be a list of header or claim names")
        if not isinstance(self.identity_headers, dict):
            raise SettingsError("identity_headers must map header names to identity fields")
        from extauthz.identity.headers import IdentityHeaders

        try:
            IdentityHeaders.from_mapping(self.identity_headers)
        except ValueError as exc:
            raise SettingsError(str(exc)) from exc
        if (
            self.anomaly_max_denies < 1
            or self.anomaly_window_seconds <= 0
            or self.anomaly_quarantine_seconds <= 0
            or self.anomaly_max_tracked < 1
        ):
            raise SettingsError("anomaly settings must be positive")
        self._validate_bounds()
        for tb in self.trust_bundle:
            td, sep, path = tb.partition("=")
            if not sep or not td or not path:
                raise SettingsError(f"--trust-bundle {tb!r}: expected TD=PATH")
        for cidr in self.trusted_proxy:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(f"--trusted-proxy {cidr!r}: not an IP address or CIDR") from None

    def _validate_bounds(self) -> None:
        for name in (
            "max_message_bytes",
            "max_streams_per_connection",
            "max_connections",
            "max_buffered_bytes_per_connection",
            "max_buffered_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SettingsError(f"{name} must be a whole number >= 1")
        if not isinstance(self.io_threads_batch, bool):
            raise SettingsError("io_threads_batch must be true or false")
        if self.max_message_bytes > 64 * 1024 * 1024:
            raise SettingsError("max_message_bytes must be at most 64 MiB")
        if not isinstance(self.body_timeout, (int, float)) or not 0 < self.body_timeout <= 3600:
            raise SettingsError("body_timeout must be a number of seconds in (0, 3600]")
        if not (
            self.max_message_bytes + 5
            <= self.max_buffered_bytes_per_connection
            <= self.max_buffered_bytes
        ):
            raise SettingsError(
                "bounds must nest: max_message_bytes + 5 <= max_buffered_bytes_per_connection"
                " <= max_buffered_bytes"
            )


TRANSPORTS = ("grpcio", "h2corn")


def worker_listen(listen: str, index: int) -> str:
    """The listen address of worker ``index``: the base address for worker 0, then port + i
    (``HOST:PORT``) or the socket path with a ``.i`` suffix (``unix:/PATH``)."""
    if index == 0:
        return listen
    kind, where = parse_listen(listen)
    if kind == "unix":
        return f"unix:{where}.{index}"
    host = listen.rpartition(":")[0]
    return f"{host}:{int(where) + index}"


def worker_addresses(listen: str, workers: int) -> list[str]:
    """Every worker's address, in order: what ``extauthz envoy-config --workers N`` lists."""
    return [worker_listen(listen, i) for i in range(workers)]


def parse_listen(addr: str) -> tuple[str, str | int]:
    """``HOST:PORT`` -> ("tcp", (host, port)); ``unix:/PATH`` -> ("unix", path)."""
    if addr.startswith("unix:"):
        path = addr[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise SettingsError(f"listen address {addr!r}: use unix:/ABSOLUTE/PATH")
        return "unix", path
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise SettingsError(f"listen address {addr!r}: expected HOST:PORT or unix:/PATH")
    return "tcp", int(port)


_KEYS = {f.name for f in fields(Settings)}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file: keys are the long flag names (``audit-log`` or ``audit_log``)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _KEYS:
            raise SettingsError(f"config file {path}: unknown setting {key!r}")
        out[name] = value
    return out


def build_settings(config_file: str | None, flags: dict[str, Any]) -> Settings:
    """Merge: defaults < config file < flags given on the command line (not None)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    for key, value in flags.items():
        if value is not None and value != [] and key in _KEYS:
            values[key] = value
    try:
        settings = Settings(**values)
    except TypeError as exc:
        raise SettingsError(str(exc)) from exc
    for name in ("trust_bundle", "trusted_proxy"):
        v = getattr(settings, name)
        if isinstance(v, str):
            setattr(settings, name, [v])
    settings.validate()
    return settings
