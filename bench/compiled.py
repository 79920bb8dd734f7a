"""The opt-in compiled build: mypyc compiles the Check hot path in place (``make compiled``).

    python bench/compiled.py build [-j N] [--if-possible]   # compile HOT_PATH, .so next to .py
    python bench/compiled.py clean          # remove them: the pure-Python package again
    python bench/compiled.py status         # which modules import compiled (and stale ones)

Needs a C compiler and the Python headers (Debian: gcc, python3-dev) and mypy (the venv's test
extra). The C sources and objects go to build/mypyc/; only the extension modules are copied
into the package (.gitignore'd). Nothing in extauthz needs them: without them, or after
``clean``, the same code runs as Python. See bench/README.md ("Compiled with mypyc").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from extauthz import compiled  # noqa: E402

GROUP = "extauthz._compiled"  # the shared library: extauthz/_compiled__mypyc.*.so
BUILD_DIR = "build/mypyc"


def toolchain_missing() -> str | None:
    """Why this machine cannot build the extensions (no C compiler, no Python headers), or None."""
    import shutil
    import sysconfig

    if not any(shutil.which(cc) for cc in (os.environ.get("CC", "cc"), "gcc", "clang")):
        return "no C compiler (cc, gcc or clang)"
    include = Path(sysconfig.get_paths()["include"])
    if not (include / "Python.h").is_file():
        return f"no Python headers ({include}/Python.h; Debian: python3-dev)"
    return None


def build(jobs: int, if_possible: bool = False) -> int:
    missing = toolchain_missing()
    if missing is not None:
        print(f"cannot compile the hot path: {missing}; extauthz runs as pure Python")
        return 0 if if_possible else 1
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)  # mypy reads pyproject.toml's [tool.mypy] from here
    paths = [str(compiled.source_of(m).relative_to(ROOT)) for m in compiled.HOT_PATH]
    # The sources as this build reads them: an edit made while it runs shows as stale after.
    digests = {m: compiled.source_digest(m) for m in compiled.HOT_PATH}
    (compiled.PACKAGE / compiled.MANIFEST).unlink(missing_ok=True)  # until this build is done
    t0 = time.monotonic()
    extensions = mypycify(paths, opt_level="3", group_name=GROUP, target_dir=BUILD_DIR)
    setup(
        name="extauthz-compiled",
        ext_modules=extensions,
        script_args=["-q", "build_ext", "--inplace", f"--build-temp={BUILD_DIR}/temp",
                     f"--build-lib={BUILD_DIR}/lib", f"--parallel={jobs}"],
    )
    got = compiled.compiled_modules()
    (compiled.PACKAGE / compiled.MANIFEST).write_text(
        json.dumps({"mypyc": mypyc_version(), "sources": digests}, indent=1, sort_keys=True) + "\n"
    )
    missing = sorted(set(compiled.HOT_PATH) - set(got))
    print(f"compiled {len(got)} modules in {time.monotonic() - t0:.0f} s"
          + (f"; NOT compiled: {', '.join(missing)}" if missing else ""))
    return 1 if missing else 0


def mypyc_version() -> str:
    from mypy.version import __version__

    return str(__version__)


def clean() -> int:
    (compiled.PACKAGE / compiled.MANIFEST).unlink(missing_ok=True)
    removed = 0
    for name in compiled.compiled_modules():
        ext = compiled.extension_of(name)
        if ext is not None:
            ext.unlink()
            removed += 1
    for lib in compiled.PACKAGE.glob(GROUP.rsplit(".", 1)[1] + "__mypyc*"):
        lib.unlink()
    print(f"removed {removed} compiled modules: extauthz runs as pure Python")
    return 0


def status() -> int:
    print(compiled.summary())
    for name in compiled.compiled_modules():
        print(f"  {name}")
    for name in compiled.stale_modules():
        print(f"  stale (not built from the current source): {name}")
    return 1 if compiled.stale_modules() else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("action", choices=["build", "clean", "status"])
    p.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1, help="parallel C compiles")
    p.add_argument("--if-possible", action="store_true",
                   help="build: without a C compiler or the Python headers, say so and exit 0")
    args = p.parse_args(argv)
    if args.action == "build":
        return build(args.jobs, args.if_possible)
    return clean() if args.action == "clean" else status()


if __name__ == "__main__":
    sys.exit(main())
