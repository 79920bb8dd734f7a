"""Writing policy directories for tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


def write_policies(
    directory: Path, docs: Mapping[str, str | Mapping[str, Any] | list[Mapping[str, Any]]]
) -> Path:
    """Write ``{file name: YAML text | document | [documents]}`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        if isinstance(doc, str):
            text = doc
        elif isinstance(doc, list):
            text = yaml.safe_dump_all([dict(d) for d in doc], sort_keys=False)
        else:
            text = yaml.safe_dump(dict(doc), sort_keys=False)
        (directory / name).write_text(text, encoding="utf-8")
    return directory
