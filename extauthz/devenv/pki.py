"""The test PKI: one CA for example.org, three workload SVIDs and Envoy's server certificate."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from extauthz.devenv.ca import (
    Issued,
    PemFiles,
    issue_server_cert,
    issue_svid,
    make_ca,
    write_pem_files,
)
from extauthz.tools.envoy_config import DownstreamTls

TRUST_DOMAIN = "example.org"
FRONTEND_ID = "spiffe://example.org/ns/shop/sa/frontend"
API_ID = "spiffe://example.org/ns/shop/sa/api"
INTRUDER_ID = "spiffe://example.org/ns/other/sa/intruder"
ENVOY_ID = "spiffe://example.org/ns/shop/sa/envoy"
"""Envoy's own URI SAN: the ``destination.principal`` of every check (namespace ``shop``)."""

WORKLOADS: dict[str, str] = {
    "frontend": FRONTEND_ID,
    "api": API_ID,
    "intruder": INTRUDER_ID,
}


@dataclass(frozen=True)
class DevPki:
    """Everything minted by :func:`build_pki`, with the PEM files written under ``directory``."""

    directory: Path
    ca: Issued
    ca_file: Path
    server: Issued
    server_files: PemFiles
    svids: dict[str, Issued]
    """Keyed by short name: ``frontend``, ``api``, ``intruder``."""
    files: dict[str, PemFiles]
    """PEM files of ``svids``, same keys."""

    def envoy_tls(self, *, require_client_certificate: bool = True) -> DownstreamTls:
        """Envoy's listener TLS: the server chain/key, clients must chain to the CA."""
        return DownstreamTls(
            cert_chain=self.server_files.chain,
            private_key=self.server_files.key,
            trusted_ca=self.ca_file,
            require_client_certificate=require_client_certificate,
        )

    def add(self, name: str, issued: Issued) -> PemFiles:
        """Write an extra (possibly odd) certificate next to the others and register it."""
        files = write_pem_files(issued, self.directory, name)
        self.svids[name] = issued
        self.files[name] = files
        return files


def build_pki(directory: Path) -> DevPki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(TRUST_DOMAIN, valid_for=datetime.timedelta(days=2))
    ca_file = directory / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    day = datetime.timedelta(days=1)  # outlives any test session
    server = issue_server_cert(ca, spiffe_id=ENVOY_ID, valid_for=day)
    svids = {name: issue_svid(ca, spiffe_id, valid_for=day) for name, spiffe_id in WORKLOADS.items()}
    return DevPki(
        directory=directory,
        ca=ca,
        ca_file=ca_file,
        server=server,
        server_files=write_pem_files(server, directory, "envoy-server"),
        svids=svids,
        files={name: write_pem_files(s, directory, name) for name, s in svids.items()},
    )
