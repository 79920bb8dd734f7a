"""Coverage-guided fuzzing of a target in ``targets.py`` with atheris (libFuzzer).

    python tests/fuzz/run_atheris.py check  [libFuzzer flags] [corpus dirs]
    python tests/fuzz/run_atheris.py policy [libFuzzer flags] [corpus dirs]

A longer run (see tests/fuzz/README.md): ``-max_total_time=600 -timeout=10
-artifact_prefix=/tmp/fuzz-check/ /tmp/fuzz-check/corpus``. A crash writes the input to
``<artifact_prefix>crash-<sha1>``: keep it under ``tests/fuzz/corpus-regressions/<target>/``,
where ``test_fuzz_regressions.py`` replays it in every test run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

# yaml stays uninstrumented: its recursive composer is ~20x slower instrumented, so deep
# nesting would read as a libFuzzer timeout rather than a finding.
with atheris.instrument_imports(include=["extauthz", "targets"]):
    import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(targets.TARGETS)}}} [libFuzzer args]")
    name = sys.argv.pop(1)
    target = targets.TARGETS[name]
    target(b"")  # build engines before the clock starts
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
