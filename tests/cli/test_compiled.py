"""The opt-in mypyc build (``make compiled``): when present it is what runs, and it is current.

Passes on the pure-Python package (nothing compiled) and on the compiled one alike.
"""

from __future__ import annotations

import importlib
import importlib.machinery

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


def test_the_compiled_build_is_not_older_than_its_sources() -> None:
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
