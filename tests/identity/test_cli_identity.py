"""``extauthz check --trust-bundle`` and ``serve`` startup with bad bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from helpers.identity import cert_field, peer_authn

from extauthz.cli import main
from extauthz.devenv.ca import issue_svid, make_ca
from extauthz.tools.samples import check_request

FRONTEND = "spiffe://example.org/ns/shop/sa/frontend"
ALLOW = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["example.org/ns/shop/sa/frontend"]}}]}]
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = make_ca("example.org")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(ALLOW + "---" + peer_authn("STRICT"))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.cert_pem)
    request = tmp_path / "req.json"
    msg = check_request(certificate=cert_field(issue_svid(ca, FRONTEND)))
    request.write_text(json_format.MessageToJson(msg))
    return policies, bundle, request


def test_check_with_trust_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies, bundle, request = _setup(tmp_path)
    assert main(["check", "--policies", str(policies), str(request)]) == 1  # STRICT, no bundle
    assert json.loads(capsys.readouterr().out)["reason"] == "peer_authentication_required"
    args = ["check", "--policies", str(policies), "--trust-bundle", f"example.org={bundle}", str(request)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["allowed"] is True


def test_bad_bundle_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policies, _, request = _setup(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a bundle")
    args = ["check", "--policies", str(policies), "--trust-bundle", f"example.org={bad}", str(request)]
    assert main(args) == 2
    assert "trust bundle" in capsys.readouterr().err
    serve = [
        "serve",
        "--policies",
        str(policies),
        "--listen",
        "127.0.0.1:0",
        "--audit-log",
        str(tmp_path / "a"),
    ]
    assert main([*serve, "--trust-bundle", f"example.org={bad}"]) == 2
    assert main([*serve, "--trust-bundle", f"example.org={tmp_path / 'missing.pem'}"]) == 2
    assert main([*serve, "--trusted-proxy", "not-a-cidr"]) == 2


def test_identity_settings_from_config_file(tmp_path: Path) -> None:
    from extauthz.settings import SettingsError, build_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "trust-bundle: example.org=/b.pem\ntrusted-proxy: [10.0.0.0/8]\n"
        "bind-token-to-peer: true\nworkload-api: unix:///run/agent.sock\n"
    )
    s = build_settings(str(cfg), {})
    assert s.trust_bundle == ["example.org=/b.pem"] and s.trusted_proxy == ["10.0.0.0/8"]
    assert s.bind_token_to_peer is True and s.workload_api == "unix:///run/agent.sock"
    cfg.write_text("trusted-proxy: [nonsense]\n")
    with pytest.raises(SettingsError):
        build_settings(str(cfg), {})
