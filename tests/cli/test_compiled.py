"""The opt-in mypyc build (``make compiled``): when present it is what runs, and it is current.

Passes on the pure-Python package (nothing compiled) and on the compiled one alike.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

from extauthz import compiled
from extauthz.cli_args import parser


def _is_extension(path: str | None) -> bool:
    return path is not None and path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.parametrize("name", compiled.HOT_PATH)
def test_a_compiled_module_is_what_imports(name: str) -> None:
    assert compiled.source_of(name).is_file()
    module = importlib.import_module(name)
    assert _is_extension(module.__file__) == (compiled.extension_of(name) is not None)
    assert (name in compiled.compiled_modules()) == _is_extension(module.__file__)


def test_the_compiled_build_is_built_from_its_sources() -> None:
    stale = compiled.stale_modules()
    assert stale == [], "sources changed since `make compiled`: run it again or `make pure`"


def test_only_hot_path_modules_are_compiled() -> None:
    # The tests inject faults through IdentityContext.resolver: resolver.py must stay Python.
    assert "extauthz.identity.resolver" not in compiled.HOT_PATH
    assert set(compiled.compiled_modules()) <= set(compiled.HOT_PATH)


def test_version_says_what_runs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--version"])
    out = capsys.readouterr().out
    n = len(compiled.compiled_modules())
    assert (f"compiled with mypyc: {n} modules" if n else "pure Python") in out


def _fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: bool) -> Path:
    """A package dir with one "compiled" module (an empty file named like an extension) and,
    if asked, the manifest a build writes."""
    import json

    pkg = tmp_path / "extauthz"
    (pkg / "envoy").mkdir(parents=True)
    src = pkg / "envoy" / "grpc.py"
    src.write_text("X = 1\n")
    (pkg / "envoy" / ("grpc" + importlib.machinery.EXTENSION_SUFFIXES[0])).write_bytes(b"")
    monkeypatch.setattr(compiled, "PACKAGE", pkg)
    if manifest:
        digest = compiled.source_digest("extauthz.envoy.grpc")
        (pkg / compiled.MANIFEST).write_text(json.dumps({"sources": {"extauthz.envoy.grpc": digest}}))
    return src


def test_a_source_edited_after_the_build_is_stale_whatever_its_file_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _fake_build(tmp_path, monkeypatch, manifest=True)
    assert compiled.compiled_modules() == ["extauthz.envoy.grpc"]
    assert compiled.stale_modules() == []
    src.write_text("X = 2\n")
    os.utime(src, (0, 0))  # restored with an old time (cp -p, tar): still stale
    assert compiled.stale_modules() == ["extauthz.envoy.grpc"]


def test_a_build_without_its_manifest_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, monkeypatch, manifest=False)
    assert compiled.stale_modules() == ["extauthz.envoy.grpc"]


def test_serve_refuses_a_build_not_made_from_its_sources(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Serving would run the old compiled code in place of the edited source: exit 2."""
    from extauthz.serving import main
    from extauthz.settings import Settings

    monkeypatch.setattr(compiled, "stale_modules", lambda: ["extauthz.pipeline"])
    assert main.serve_worker(Settings(policies="/nonexistent")) == 2
    assert "extauthz.pipeline" in caplog.text and "make compiled" in caplog.text
