"""``xff_num_trusted_hops``: read from the config file, validated, carried into the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from extauthz.policy.store import PolicyStore
from extauthz.settings import SettingsError, build_settings


def test_config_file_sets_hops(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("xff-num-trusted-hops: 2\n")
    assert build_settings(str(cfg), {}).xff_num_trusted_hops == 2
    assert build_settings(None, {}).xff_num_trusted_hops == 0


@pytest.mark.parametrize("value", ["-1", "'two'", "1.5", "true"])
def test_bad_hops_refused(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"xff_num_trusted_hops: {value}\n")
    with pytest.raises(SettingsError):
        build_settings(str(cfg), {})


def test_store_compiles_with_hops(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path, xff_num_trusted_hops=3)
    assert store.load().xff_num_trusted_hops == 3
