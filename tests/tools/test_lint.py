# ruff: noqa: E501
"""``extauthz lint``: errors, each warning kind (and its absence), exit codes, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.policy import HEADER

from extauthz.cli import main
from extauthz.policy import load_text
from extauthz.tools.lint import lint_directory, lint_policies


def pol(name: str, spec: str, ns: str = "istio-system") -> str:
    return f"---\n{HEADER}metadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"


SAFE = "{from: [{source: {principals: [example.org/ns/a/sa/b]}}], to: [{operation: {paths: ['/api/*']}}]}"


def codes(text: str) -> list[tuple[str, str | None, int | None]]:
    return [(f.code, f.policy, f.rule) for f in lint_policies(load_text(text))]


def test_clean_set_has_no_findings() -> None:
    text = pol("a", f"{{rules: [{SAFE}]}}") + pol(
        "d", "{action: DENY, rules: [{to: [{operation: {paths: [/admin, '/admin/*'], hosts: [a.example, 'a.example:*']}}]}]}"
    )
    assert codes(text) == []


@pytest.mark.parametrize(
    ("spec", "code"),
    [
        ("{rules: [{}]}", "open-allow"),
        ("{rules: [{to: [{operation: {paths: [/x]}}]}]}", "open-allow"),
        ("{rules: [{from: [{source: {principals: ['*']}}]}]}", "open-allow"),
        ("{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]}", "open-allow"),
        ("{rules: [{from: [{source: {requestPrincipals: [https://i/alice]}}]}]}", "no-spiffe-principal"),
        ("{rules: [{from: [{source: {principals: [a/b]}}, {source: {requestPrincipals: [i/s]}}]}]}", "no-spiffe-principal"),
        ("{rules: [{from: [{source: {principals: [a/ns/x/sa/y]}}], to: [{operation: {methods: [get]}}]}]}", "method-case"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {paths: ['/api/*'], notPaths: ['/a*']}}]}]}", "unreachable"),
        ("{rules: [{from: [{source: {principals: [a/b], notPrincipals: ['a/*']}}]}]}", "unreachable"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], when: [{key: source.ip, values: [10.1.0.0/16], notValues: [10.0.0.0/8]}]}]}", "unreachable"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {paths: ['/a//b']}}]}]}", "unreachable"),
        ("{action: DENY, rules: [{to: [{operation: {paths: ['/api/../admin/*']}}]}]}", "deny-path-not-canonical"),
        ("{action: DENY, rules: [{to: [{operation: {paths: ['/%61dmin']}}]}]}", "deny-path-not-canonical"),
        ("{action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}", "deny-path-exact"),
        ("{action: DENY, rules: [{to: [{operation: {hosts: [admin.example]}}]}]}", "deny-host-port"),
        ("{selector: {matchLabels: {namespace: other}}, rules: [" + SAFE + "]}", "selector-unsettable"),
        # valid but suspicious: Istio loads them (issue 12)
        ("{rules: [{from: [{source: {principals: ['spiffe://a/ns/x/sa/y']}}]}]}", "principal-scheme"),
        ("{rules: [{from: [{source: {notPrincipals: ['spiffe://a/b']}}]}]}", "principal-scheme"),
        ("{rules: [{when: [{key: source.principal, values: ['spiffe://a/b']}]}]}", "principal-scheme"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {paths: [rule-path]}}]}]}", "path-no-slash"),
        ("{rules: [{from: [{source: {serviceAccounts: ['shop/*']}}]}]}", "service-account-form"),
        ("{rules: [{from: [{source: {serviceAccounts: ['a/b/c']}}]}]}", "service-account-form"),
        ("{rules: [{from: [{source: {principals: ['a/ns/*/sa/b']}}]}]}", "literal-star"),
        ("{rules: [{from: [{source: {principals: ['*a*']}}]}]}", "literal-star"),  # suffix 'a*'!
        ("{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {paths: ['/a*b']}}]}]}", "literal-star"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {hosts: ['*.a.*']}}]}]}", "literal-star"),
        ("{rules: [{from: [{source: {principals: [a/b]}}], when: [{key: 'request.headers[x]', values: ['a*b']}]}]}", "literal-star"),
    ],
)
def test_warning(spec: str, code: str) -> None:
    found = codes(pol("p", spec, ns="shop"))
    assert code in [c for c, _, _ in found], found


@pytest.mark.parametrize(
    "spec",
    [
        "{rules: [{from: [{source: {namespaces: ['s*p'], principals: [a/b]}}]}]}",  # a glob there
        "{rules: [{from: [{source: {trustDomains: ['ex*.org'], principals: [a/b]}}]}]}",
        "{rules: [{from: [{source: {serviceAccounts: [frontend, shop/api], principals: [a/b]}}]}]}",
        "{rules: [{from: [{source: {principals: [a/b]}}], to: [{operation: {paths: ['/a/{*}/b/{**}', '*']}}]}]}",
    ],
)
def test_odd_value_warnings_not_given(spec: str) -> None:
    found = [c for c, _, _ in codes(pol("p", spec, ns="shop"))]
    assert not {"literal-star", "principal-scheme", "path-no-slash", "service-account-form"} & set(found), found


def test_canonical_twin_is_suggested() -> None:
    [f] = [f for f in lint_policies(load_text(pol("d", "{action: DENY, rules: [{to: [{operation: {paths: ['/api/./%61dmin//x']}}]}]}"))) if f.code == "deny-path-not-canonical"]
    assert "'/api/admin/x'" in f.message


def test_prefix_with_dot_is_not_flagged() -> None:
    assert codes(pol("d", "{action: DENY, rules: [{to: [{operation: {paths: ['/.well*', '/x/.git/*']}}]}]}")) == []


def test_shadowed_by_earlier_broader_rule() -> None:
    text = pol("broad", "{rules: [{from: [{source: {principals: ['example.org/*']}}], to: [{operation: {paths: ['/api/*']}}]}]}")
    text += pol("narrow", "{rules: [{from: [{source: {principals: [example.org/ns/a/sa/b]}}], to: [{operation: {methods: [GET], paths: ['/api/items/{*}']}}]}]}", ns="shop")
    assert ("shadowed", "shop/narrow", 0) in codes(text)
    # not the other way round: the narrow rule does not cover the broad one
    assert ("shadowed", "istio-system/broad", 0) not in codes(text)


def test_not_shadowed_when_scope_is_narrower_or_fields_differ() -> None:
    text = pol("broad", "{rules: [{from: [{source: {principals: ['example.org/*']}}], to: [{operation: {paths: ['/api/*']}}]}]}", ns="bank")
    text += pol("narrow", "{rules: [{from: [{source: {principals: [example.org/ns/a/sa/b]}}], to: [{operation: {paths: ['/api/x']}}]}]}", ns="shop")
    assert codes(text) == []
    text = pol("broad", "{rules: [{from: [{source: {principals: ['example.org/*']}}], to: [{operation: {paths: ['/api/*']}}]}]}")
    text += pol("other", "{rules: [{from: [{source: {principals: [example.org/ns/a/sa/b]}}], to: [{operation: {paths: ['/web/x']}}]}]}")
    assert codes(text) == []


def test_allow_behind_deny_is_unreachable() -> None:
    text = pol("allow", f"{{rules: [{SAFE}]}}", ns="shop") + pol("deny", "{action: DENY, rules: [{to: [{operation: {paths: ['/api/*', /api]}}]}]}")
    assert ("unreachable", "shop/allow", 0) in codes(text)


def test_selector_checked_against_envoy_routes(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(pol("p", "{selector: {matchLabels: {app: api}}, rules: [" + SAFE + "]}"))
    envoy = tmp_path.parent / (tmp_path.name + "-envoy.yaml")
    envoy.write_text("routes:\n- typed_per_filter_config:\n    envoy.filters.http.ext_authz:\n      check_settings:\n        context_extensions: {app: web}\n")
    assert [f.code for f in lint_directory(tmp_path, envoy_config=str(envoy))] == ["selector-unsettable"]
    envoy.write_text("routes:\n- typed_per_filter_config:\n    x:\n      check_settings:\n        context_extensions: {app: api, v: '1'}\n")
    assert lint_directory(tmp_path, envoy_config=str(envoy)) == []


def test_every_broken_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(pol("a", "{rulez: []}"))
    (tmp_path / "b.yaml").write_text(pol("b", "{action: CUSTOM}"))
    (tmp_path / "c.yaml").write_text(pol("c", f"{{rules: [{SAFE}]}}"))
    found = lint_directory(tmp_path)
    assert [(f.severity, Path(f.file).name) for f in found] == [("error", "a.yaml"), ("error", "b.yaml")]
    assert "rulez" in found[0].message and found[0].line == 5


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text(pol("open", "{rules: [{}]}"))
    assert main(["lint", str(tmp_path)]) == 0
    assert "warning: [open-allow]" in capsys.readouterr().out
    assert main(["lint", "--strict", str(tmp_path)]) == 1
    capsys.readouterr()
    assert main(["lint", "--format", "json", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["warnings"] == 1 and out["findings"][0]["code"] == "open-allow"
    assert out["findings"][0]["policy"] == "istio-system/open" and out["findings"][0]["rule"] == 0
    (tmp_path / "q.yaml").write_text("kind: [")
    assert main(["lint", "--format", "json", str(tmp_path)]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["errors"] == 1 and out["findings"][0]["file"].endswith("q.yaml")


def test_shadowed_among_exact_principals() -> None:
    text = pol("a", "{rules: [{from: [{source: {principals: [x/ns/a/sa/1, x/ns/a/sa/2]}}], to: [{operation: {paths: ['/api/*']}}]}]}")
    text += pol("b", "{rules: [{from: [{source: {principals: [x/ns/a/sa/2]}}], to: [{operation: {paths: [/api/x]}}]}]}")
    text += pol("c", "{rules: [{from: [{source: {principals: [x/ns/a/sa/3]}}], to: [{operation: {paths: [/api/x]}}]}]}")
    found = codes(text)
    assert ("shadowed", "istio-system/b", 0) in found
    assert ("shadowed", "istio-system/c", 0) not in found
