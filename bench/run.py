"""The bench suite: one command each, every run bounded in time.

Network loads (h2load against running servers; need nghttp2-client):

    python bench/run.py grpc     # h2load straight at the service, next to no-op servers (grpc_load.py)
    python bench/run.py envoy    # through a real Envoy: none / RBAC / ext_authz (envoy_load.py)
    python bench/run.py scale    # serve --workers 1, 2, ... (scale_load.py)
    python bench/run.py stacks   # how the gRPC stack was chosen (stacks_load.py)
    python bench/run.py profile  # py-spy profile of the service under h2load (profile_load.py)
    python bench/run.py slow-streams # unfinished streams: service RSS, others answered (slow_streams.py)

In process (no network, seconds each):

    python bench/run.py rules    # policy-size sweep: 10, 1,000, 10,000 rules (rules_cost.py)
    python bench/run.py identity # per-check cost of tokens and peer certificates (identity_cost.py)
    python bench/run.py cache    # decision cache and audit log on/off (cache_cost.py)
    python bench/run.py hotpath  # CheckCore.answer: CPU per check, step by step (hotpath.py)
    python bench/run.py audit    # the audit writer alone: records/s (audit_cost.py)
    python bench/run.py replay   # extauthz replay: audit records decided again per second (replay_cost.py)

Through Envoy with reloads (minutes):

    python bench/run.py soak     # policy reloads and bundle rotations under load (soak.py)

    python bench/run.py all      # grpc, envoy, scale with the given options, then the in-process five

Options after the command go to it (``python bench/run.py grpc --seconds 10 --open-loop``;
``python bench/run.py NAME --help`` lists them). Results: a table on stdout,
bench/results/NAME.json (and NAME.png for the loads). See bench/README.md.
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
    "grpc": "grpc_load",
    "envoy": "envoy_load",
    "scale": "scale_load",
    "stacks": "stacks_load",
    "profile": "profile_load",
    "rules": "rules_cost",
    "identity": "identity_cost",
    "cache": "cache_cost",
    "hotpath": "hotpath",
    "memory": "memory_cost",
    "replay": "replay_cost",
    "soak": "soak",
    "slow-streams": "slow_streams",
    "audit": "audit_cost",
    "asgi": "asgi_cost",
}
LOADS = ("grpc", "envoy", "scale")  # `all`: these take the options given to `all`
IN_PROCESS = ("rules", "identity", "cache", "hotpath", "replay")  # `all`: these run with their defaults


def run(name: str, argv: list[str]) -> int:
    path = HERE / f"{COMMANDS[name]}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}_cmd", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = getattr(mod, "main", None)
    if main is None:
        print(f"{name}: {path.name} has no main()", file=sys.stderr)
        return 2
    sys.argv = [str(path), *argv]  # for --help and error messages
    code = main(argv) if inspect.signature(main).parameters else main()
    return int(code or 0)


def main() -> int:
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(sys.argv) < 2 or sys.argv[1] not in (*COMMANDS, "all"):
        print(__doc__, file=sys.stderr)
        return 2
    name, argv = sys.argv[1], sys.argv[2:]
    if name == "all":
        return max([run(n, argv) for n in LOADS] + [run(n, []) for n in IN_PROCESS])
    return run(name, argv)


if __name__ == "__main__":
    sys.exit(main())
