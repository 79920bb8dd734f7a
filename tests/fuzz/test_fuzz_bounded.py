"""A bounded coverage-guided fuzz run of each target (about 6 s each; ``-m "not fuzz"`` skips).

Runs ``run_atheris.py`` in a subprocess from the seed corpus. A crash
fails the test with the saved input's path: keep it under ``corpus-regressions/<target>/`` once
fixed. ``FUZZ_SECONDS`` changes the budget per target; the longer run is in README.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed"),
]

SECONDS = int(os.environ.get("FUZZ_SECONDS", "6"))


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_bounded_fuzz_run(target: str, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(targets.seeds(target)):
        (corpus / f"seed-{i}").write_bytes(seed)
    # The kept regressions are replayed by test_fuzz_regressions.py, not fed to the fuzzer: some
    # (deep YAML nesting) are slow by design and would read as timeouts here.
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [
        sys.executable,
        str(HERE / "run_atheris.py"),
        target,
        f"-max_total_time={SECONDS}",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=4096",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
    ]
    if target == "policy":
        cmd.append(f"-dict={HERE / 'policy.dict'}")
    cmd.append(str(corpus))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 120, check=False)
    crashes = sorted(p.name for p in artifacts.iterdir())
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0 and not crashes, (
        f"fuzz target {target!r} failed (rc {proc.returncode}); inputs saved in {artifacts}: "
        f"{crashes}\n{tail}"
    )
    done = re.search(r"Done (\d+) runs in (\d+) second", proc.stderr)
    assert done, tail
    runs, secs = int(done.group(1)), int(done.group(2))
    assert runs > 100, tail  # the target actually ran
    print(f"fuzz {target}: {runs} executions in {secs} s ({runs / max(secs, 1):.0f} exec/s)")
