"""Every example in docs/ and deploy/ READMEs is exercised.

Fenced blocks, by language (a ``<!-- directive -->`` line just before a block says more):

- ``yaml`` Istio security resources: loaded with ``extauthz.policy.load_text``; with
  ``<!-- expect-error: TEXT -->`` the load must fail with TEXT in the error.
  ``<!-- settings -->``: a ``--config`` file, loaded with ``build_settings``.
- ``json`` ``<!-- file: NAME -->``: a CheckRequest, saved as NAME for the commands that follow;
  ``<!-- audit-record -->``: its fields must be those the service writes.
- ``console``: ``$ extauthz ...`` commands run in a scratch directory holding a copy of
  ``policies/`` and the saved files; the output shown must match (JSON exactly, apart from nothing;
  YAML as a subset, so an abridged listing is allowed).
- ``sh``: instructions. ``extauthz`` command lines must parse with the real CLI parser (and
  ``envoy-config`` / ``check`` ones run); ``envoy --mode validate`` runs on what they wrote;
  ``docker`` / ``kubectl`` lines must name files that exist.
- ``text``: illustrations. Anything else fails: an example nobody checks is an example that rots.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from helpers import envoy_binary
from prometheus_client import generate_latest

from extauthz._pb.envoy.service.auth.v3 import external_auth_pb2 as ext
from extauthz.cli_args import parser as _parser
from extauthz.metrics import Metrics
from extauthz.pipeline import CheckCore
from extauthz.policy import PolicyError, compile_policies, load_directory, load_text
from extauthz.settings import build_settings

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted([*(REPO / "docs").glob("*.md"), *(REPO / "deploy").rglob("*.md")])
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```\s*$", re.M | re.S)
DIRECTIVE = re.compile(r"<!--\s*(.*?)\s*-->\s*\Z")


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    body: str
    directive: str

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line} ({self.lang or 'no language'})"


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n")
        last = before.rsplit("\n", 1)[-1]
        d = DIRECTIVE.search(last)
        out.append(Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2),
                         d.group(1) if d else ""))
    return out


def test_the_docs_exist_and_have_examples() -> None:
    names = {p.name for p in DOCS}
    assert {"policy-reference.md", "operations.md", "security.md"} <= names
    counts = {p.name: len(blocks(p)) for p in DOCS}
    assert counts["policy-reference.md"] >= 10


def _subset(expected: Any, actual: Any, where: str = "") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing"
            _subset(v, actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _subset(e, a, f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    if argv[0] == "extauthz":
        argv = [sys.executable, "-m", "extauthz", *argv[1:]]
    elif argv[0] == "envoy":
        binary = envoy_binary()
        if binary is None:
            pytest.skip("envoy binary not installed")
        argv[0] = binary
    out_file = None
    if ">" in argv:
        i = argv.index(">")
        out_file, argv = cwd / argv[i + 1], argv[:i]
    result = subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    if out_file is not None:
        out_file.write_text(result.stdout, encoding="utf-8")
    return result


def _console(block: Block, scratch: Path) -> None:
    parts = re.split(r"^\$ ", block.body, flags=re.M)
    assert parts[0].strip() == "", f"{block}: a console block starts with '$ '"
    for part in parts[1:]:
        command, _, expected = part.partition("\n")
        assert command.startswith("extauthz "), f"{block}: only extauthz commands are run"
        result = _run(command, scratch)
        assert result.returncode in (0, 1), f"{block}: {command}\n{result.stderr}"
        try:
            want = json.loads(expected)
        except json.JSONDecodeError:
            _subset(yaml.safe_load(expected), yaml.safe_load(result.stdout), str(block))
        else:
            assert json.loads(result.stdout) == want, str(block)
            if command.startswith("extauthz check"):
                assert result.returncode == (0 if want["allowed"] else 1)


def _sh(block: Block, scratch: Path) -> None:
    for line in block.body.strip().splitlines():
        argv = shlex.split(line)
        if argv[0] == "extauthz":
            words = argv[1 : argv.index(">")] if ">" in argv else argv[1:]
            try:
                _parser().parse_args(words)
            except SystemExit as exc:  # argparse's way of saying "no"
                raise AssertionError(f"{block}: {line}") from exc
            if words[0] in ("envoy-config", "check"):
                assert _run(line, scratch).returncode == 0, f"{block}: {line}"
        elif argv[0] == "envoy":
            result = _run(line, scratch)
            assert result.returncode == 0, f"{block}: {line}\n{result.stderr}{result.stdout}"
        elif argv[:3] == ["kubectl", "apply", "-k"]:
            assert (REPO / argv[3] / "kustomization.yaml").is_file(), f"{block}: {line}"
        elif argv[:2] == ["docker", "build"]:
            assert argv[-1] == "." and (REPO / "Dockerfile").is_file(), f"{block}: {line}"
        elif argv[:2] == ["docker", "run"]:
            volume = argv[argv.index("-v") + 1]
            host = volume.split(":", 1)[0].replace("$PWD/", "")
            assert (REPO / host).is_dir(), f"{block}: {line}"
            assert line.split()[-1].startswith("extauthz:")
        else:
            raise AssertionError(f"{block}: no check for {line!r}")


def _audit_fields() -> dict[str, Any]:
    engine = compile_policies(load_directory(REPO / "policies"))
    msg = ext.CheckRequest()
    msg.attributes.request.http.method = "GET"
    msg.attributes.request.http.path = "/"
    msg.attributes.request.http.headers["x-request-id"] = "req-1"
    _, record, _ = CheckCore(lambda: engine).check_message(msg)
    return record


def _keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + ".")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_examples(doc: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    shutil.copytree(REPO / "policies", scratch / "policies")
    for block in blocks(doc):
        directive = block.directive
        if directive.startswith("file:"):
            (scratch / directive.split(":", 1)[1].strip()).write_text(block.body, encoding="utf-8")
        if block.lang == "yaml" and directive == "settings":
            path = scratch / "settings.yaml"
            path.write_text(block.body, encoding="utf-8")
            settings = build_settings(str(path), {})
            for key, value in yaml.safe_load(block.body).items():
                assert getattr(settings, key.replace("-", "_")) == value, f"{block}: {key}"
        elif block.lang == "yaml" and "apiVersion: security.istio.io/" in block.body:
            if directive.startswith("expect-error:"):
                with pytest.raises(PolicyError) as info:
                    load_text(block.body, str(block))
                assert directive.split(":", 1)[1].strip() in str(info.value), str(block)
            else:
                policies = load_text(block.body, str(block))
                compile_policies(policies)
                n = (len(policies.authorization) + len(policies.request_authentication)
                     + len(policies.peer_authentication))
                assert n == len([d for d in yaml.safe_load_all(block.body) if d]), str(block)
        elif block.lang == "json" and directive.startswith("file:"):
            json_format.Parse(block.body, ext.CheckRequest())  # a CheckRequest, strictly
        elif block.lang == "json" and directive == "audit-record":
            documented = _keys(json.loads(block.body))
            written = _keys(_audit_fields())
            assert documented == written, f"{block}: {documented ^ written}"
        elif block.lang == "console":
            _console(block, scratch)
        elif block.lang == "sh":
            _sh(block, scratch)
        elif block.lang == "text":
            pass  # an illustration
        else:
            raise AssertionError(f"{block}: no test exercises this example")


def test_documented_metrics_exist() -> None:
    text = " ".join(p.read_text(encoding="utf-8") for p in DOCS)
    documented = set(re.findall(r"`(extauthz_[a-z_]+)", text))
    assert "extauthz_checks_total" in documented
    exposed = generate_latest(Metrics().registry).decode()
    for name in documented:
        base = name.removesuffix("_total")
        assert f"# TYPE {base} " in exposed or f"# TYPE {name} " in exposed, name


def _slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def test_links_resolve() -> None:
    for doc in [*DOCS, REPO / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc
            assert path.exists(), f"{doc.relative_to(REPO)}: {target}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.M)
                assert anchor in {_slug(h) for h in headings}, f"{doc.relative_to(REPO)}: {target}"
