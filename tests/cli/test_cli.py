"""The command line: ``extauthz check`` and startup errors, as users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from extauthz.cli import main
from extauthz.tools.samples import check_request

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "policies"


def _request_file(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "req.json"
    path.write_text(json_format.MessageToJson(check_request(**kw)))  # type: ignore[arg-type]
    return path


def test_check_allows_example_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", "--policies", str(POLICIES), str(_request_file(tmp_path))])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["allowed"] is True
    assert out["status"] == 200
    assert out["policy"] == "shop/frontend-to-api"
    assert out["headers"] == {"x-spiffe-id": "spiffe://example.org/ns/shop/sa/frontend"}


def test_check_denies_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", "--policies", str(POLICIES), str(_request_file(tmp_path, path="/admin"))])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert out == {
        "allowed": False,
        "status": 403,
        "reason": "denied_by_policy",
        "policy": "istio-system/deny-admin",
        "rule": 0,
        "headers": {},
        "request_id": None,
        "explanation": "denied by DENY policy istio-system/deny-admin rules[0]",
        "failed": None,
    }


def test_check_bad_path_is_400(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    req = _request_file(tmp_path, path="/api/./items")
    rc = main(["check", "--policies", str(POLICIES), str(req)])
    out = json.loads(capsys.readouterr().out)
    assert (rc, out["status"], out["allowed"]) == (1, 400, False)


def test_check_reads_stdin() -> None:
    text = json_format.MessageToJson(check_request(path="/healthz", principal=""))
    proc = subprocess.run(
        [sys.executable, "-m", "extauthz", "check", "--policies", str(POLICIES), "-"],
        input=text, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["policy"] == "istio-system/health-open"


def test_check_input_error_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"attributes": {"nope": 1}}')
    assert main(["check", "--policies", str(POLICIES), str(bad)]) == 2
    assert main(["check", "--policies", str(POLICIES), str(tmp_path / "missing.json")]) == 2


def test_check_bad_policy_dir_exits_2_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "a.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: x, namespace: y}\nspec:\n  rules:\n  - to:\n"
        "    - operation: {pathz: [/a]}\n"
    )
    assert main(["check", "--policies", str(pol), str(_request_file(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert f"{pol / 'a.yaml'}:7" in err
    assert "pathz" in err


def test_serve_refuses_bad_policies_at_startup(tmp_path: Path) -> None:
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "bad.yaml").write_text("kind: AuthorizationPolicy\napiVersion: security.istio.io/v1\n"
                                  "metadata: {name: x}\nspec: {action: CUSTOM}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "extauthz", "serve", "--policies", str(pol),
         "--listen", "127.0.0.1:0", "--audit-log", str(tmp_path / "audit.log")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "bad.yaml:4" in proc.stderr
    assert "CUSTOM" in proc.stderr


def test_serve_rejects_bad_listen_address(tmp_path: Path) -> None:
    assert main(["serve", "--policies", str(POLICIES), "--listen", "nowhere"]) == 2


def test_config_file_settings_and_flags_win(tmp_path: Path) -> None:
    from extauthz.settings import SettingsError, build_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: 127.0.0.1:7000\naudit-log: /tmp/x.log\npolicies: /etc/p\n")
    s = build_settings(str(cfg), {"listen": "127.0.0.1:7001", "policies": None})
    assert (s.listen, s.audit_log, s.policies) == ("127.0.0.1:7001", "/tmp/x.log", "/etc/p")
    cfg.write_text("listne: 1\n")
    with pytest.raises(SettingsError, match="listne"):
        build_settings(str(cfg), {})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
         "OTEL_EXPORTER_OTLP_PROTOCOL='http/protobuf' is not supported"),
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger' is not supported"),
    ],
)
def test_serve_refuses_a_tracing_setting_it_cannot_use(
    env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before anything starts (the supervisor of --workers N too), exit 2. (The policy
    directory does not exist: were the setting not checked first, serve would fail on that.)"""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["serve", "--policies", str(tmp_path / "absent"), "--listen", "127.0.0.1:0",
                 "--audit-log", "-"])
    assert code == 2
    assert message in capsys.readouterr().err
