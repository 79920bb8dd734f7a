"""Replay every kept fuzz input and the seed corpus through the fuzz targets (no atheris needed).

``corpus-regressions/<target>/`` holds inputs that once broke an invariant (crashes found by the
fuzzer or by hand); each must now pass its target. Add a crash file there to keep it fixed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

REGRESSIONS = sorted(
    (target.name, path)
    for target in (HERE / "corpus-regressions").iterdir()
    if target.is_dir() and target.name in targets.TARGETS
    for path in target.iterdir()
    if path.is_file()
)


@pytest.mark.parametrize(("target", "path"), REGRESSIONS, ids=lambda v: getattr(v, "name", v))
def test_kept_input_passes(target: str, path: Path) -> None:
    targets.TARGETS[target](path.read_bytes())


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_seed_corpus_passes(target: str) -> None:
    for seed in targets.seeds(target):
        targets.TARGETS[target](seed)


def test_check_target_catches_a_wrong_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle can fail: an engine that allows everything trips it on the intruder seed."""
    from extauthz.pipeline import CheckCore
    from extauthz.policy import compile_policies, load_text

    allow_all = compile_policies(load_text(targets.DENY_ALL.replace("spec: {}", "spec: {rules: [{}]}")
                                           .split("---")[0]))
    name, _, oracle = targets._cores()[2]
    monkeypatch.setattr(targets, "CORES", [(name, CheckCore(lambda: allow_all), oracle)])
    intruder = targets.seeds("check")[-1]
    with pytest.raises(AssertionError, match="allowed a request the policy does not allow"):
        targets.check_target(intruder)


def test_policy_target_rejects_other_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The target fails on anything but PolicyError from the loader."""

    def boom(text: str) -> None:
        raise RecursionError("deep")

    monkeypatch.setattr(targets, "load_text", boom)
    with pytest.raises(RecursionError):
        targets.policy_target(b"[")
