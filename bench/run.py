"""The bench suite: one command each, every run bounded in time.

    python bench/run.py grpc    # h2load straight at the service, next to no-op servers
    python bench/run.py envoy   # through a real Envoy: none / RBAC / ext_authz (no-op, extauthz)
    python bench/run.py scale   # --workers 1, 2, ...
    python bench/run.py rules   # policy-size sweep (bench/rules.py, from the policy work)
    python bench/run.py stacks  # how the gRPC stack was chosen (grpcio variants, ASGI servers)
    python bench/run.py profile # py-spy profile of the service under h2load
    python bench/run.py hotpath # CheckCore.answer in process: CPU per check, step by step
    python bench/run.py audit   # the audit writer alone, in process: records/s (audit_cost.py)
    python bench/run.py all     # grpc, envoy, scale, rules (and stacks), one after the other

Options after the command go to it (``python bench/run.py grpc --seconds 10 --open-loop``).
Results: a table on stdout, bench/results/NAME.json and NAME.png. See bench/README.md.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.chdir(HERE.parent)  # the commands start servers with repo-relative paths

COMMANDS = {
    "grpc": "bench_grpc",
    "envoy": "bench_envoy",
    "scale": "bench_scale",
    "rules": "rules",
    "stacks": "bench_stacks",
    "profile": "bench_profile",
    "hotpath": "hotpath",
    "audit": "audit_cost",
}


def run(name: str, argv: list[str]) -> int:
    module = COMMANDS[name]
    path = HERE / f"{module}.py"
    if not path.exists():
        print(f"{name}: {path.name} is not in this checkout (it comes with the policy work)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"bench_{name}_cmd", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = getattr(mod, "main", None)
    if main is None:
        print(f"{name}: {path.name} has no main()", file=sys.stderr)
        return 2
    if inspect.signature(main).parameters:
        code = main(argv)
    else:  # a main() that reads sys.argv itself
        sys.argv = [str(path), *argv]
        code = main()
    return int(code or 0)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*COMMANDS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "all":
        return max(run(n, argv if n != "rules" else []) for n in ("grpc", "envoy", "scale", "rules"))
    return run(name, argv)


if __name__ == "__main__":
    sys.exit(main())
