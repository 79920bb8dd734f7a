"""Which modules of this installation run compiled (``make compiled``: mypyc, bench/compiled.py).

The product never depends on it: the pure-Python package is the default and the reference. An
opt-in build compiles the modules of the Check hot path (``HOT_PATH``) with mypyc in place, each
extension module next to its source (``pipeline.cpython-311-x86_64-linux-gnu.so`` beside
``pipeline.py``): Python imports an extension module before a source module of the same name in
the same directory. ``make pure`` removes them. ``extauthz --version`` says which are in use.

Left out on purpose (tests replace their functions or methods with monkeypatch, which compiled
callers do not see): ``identity/resolver.py`` (``IdentityContext.resolver``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# The Check path: cached (pipeline down to the response bytes, the audit line, metrics) and
# uncached (request view, identity, policy evaluation, the record's input). bench/README.md.
HOT_PATH = (
    "extauthz.pipeline",
    "extauthz.metrics",
    "extauthz.envoy.grpc",
    "extauthz.envoy.request",
    "extauthz.envoy.response",
    "extauthz.identity.headers",
    "extauthz.identity.model",
    "extauthz.identity.peer",
    "extauthz.identity.witness",
    "extauthz.policy.attributes",
    "extauthz.policy.compile",
    "extauthz.policy.engine",
    "extauthz.policy.index",
    "extauthz.policy.matchers",
    "extauthz.decision.cache",
    "extauthz.decision.decision",
    "extauthz.decision.hits",
    "extauthz.decision.inputs",
    "extauthz.decision.record",
    "extauthz.decision.render",
    "extauthz.decision.audit.chain",
    "extauthz.decision.audit.record",
    "extauthz.decision.audit.writer",
)


def source_of(module: str) -> Path:
    """The ``.py`` file of ``module`` (a name under ``extauthz``)."""
    return PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_of(module: str) -> Path | None:
    """The extension module this interpreter would import for ``module`` instead of its
    source, if there is one (an extension built for another Python has another suffix)."""
    src = source_of(module)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        ext = src.with_name(src.stem + suffix)
        if ext.is_file():
            return ext
    return None


def compiled_modules() -> list[str]:
    """Modules under ``extauthz`` that import as extension modules here, by name."""
    found = []
    for src in sorted(PACKAGE.rglob("*.py")):
        rel = src.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        if extension_of(name) is not None:
            found.append(name)
    return found


MANIFEST = "_compiled.manifest.json"  # beside the package's __init__: source digests of a build


def source_digest(module: str) -> str:
    return hashlib.sha256(source_of(module).read_bytes()).hexdigest()


def stale_modules() -> list[str]:
    """Compiled modules whose source is not the one they were built from (``make compiled``
    again): the build records each source's SHA-256 (``MANIFEST``); file times are not trusted
    (a checkout, ``cp -p`` or ``tar`` can give an edited source an old time). A compiled module
    the manifest does not vouch for (no manifest, not listed) counts as stale too."""
    try:
        built: dict[str, str] = json.loads((PACKAGE / MANIFEST).read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError):
        built = {}
    return [name for name in compiled_modules() if built.get(name) != source_digest(name)]


def summary() -> str:
    """One line for ``extauthz --version``: pure, or how many modules run compiled."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    stale = stale_modules()
    text = f"compiled with mypyc: {len(compiled)} modules"
    return text + (f", {len(stale)} not built from their current source" if stale else "")
