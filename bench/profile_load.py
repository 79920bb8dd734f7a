"""``profile``: where a check's time goes, by py-spy sampling ``extauthz serve`` under h2load.

    python bench/run.py profile [--seconds 5] [--transport h2corn] [--top 25]

Prints the functions with the most samples (inclusive and self time, idle threads left out)
and writes bench/results/profile.txt (py-spy raw stacks) and profile.svg (flame graph).
py-spy (``pip install py-spy``) needs ptrace rights: root, or CAP_SYS_PTRACE in a container.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RESULTS, free_port, load_grpc, need, pinned, set_pinning, started, which
from bodies import body_set

IDLE = (
    "Condition.wait",
    "select (",
    "EpollSelector.select",
    "watch (watchfiles",
    "Queue.get",
    "_wait_for_tstate",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--transport", default="h2corn")
    p.add_argument("--policies", default="policies")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--no-pin", action="store_true", help="do not pin the service to CPU 0, h2load to CPU 1")
    args = p.parse_args(argv)
    need("h2load", "nghttp2-client")
    spy_bin = which("py-spy")
    if not spy_bin:
        sys.exit("py-spy is missing: pip install py-spy")
    RESULTS.mkdir(parents=True, exist_ok=True)
    set_pinning(not args.no_pin)
    port = free_port()
    audit_dir = tempfile.mkdtemp(prefix="bench-profile-")
    cmd = [
        sys.executable,
        "-m",
        "extauthz",
        "serve",
        "--policies",
        args.policies,
        "--listen",
        f"127.0.0.1:{port}",
        "--audit-log",
        os.path.join(audit_dir, "audit.jsonl"),  # a real file, as in production
        "--transport",
        args.transport,
    ]
    body = body_set("allow")  # a different request each time (bench/bodies.py)
    kw = {"conns": args.connections, "streams": args.streams}
    raw = RESULTS / "profile.txt"
    with started("extauthz", pinned(cmd), port=port) as proc:
        load = threading.Thread(
            target=load_grpc, args=(port, body), kwargs={"seconds": args.seconds + 2, "warmup": 0, **kw}
        )
        load.start()
        spy = [spy_bin, "record", "-p", str(proc.pid), "-d", str(max(1, round(args.seconds))), "-r", "250"]
        subprocess.run([*spy, "-f", "raw", "-o", str(raw)], capture_output=True, check=False)
        load.join()
        load = threading.Thread(target=load_grpc, args=(port, body), kwargs={"seconds": 4, "warmup": 0, **kw})
        load.start()
        subprocess.run(
            [*spy[:6], "2", "-r", "250", "-f", "flamegraph", "-o", str(RESULTS / "profile.svg")],
            capture_output=True,
            check=False,
        )
        load.join()
    shutil.rmtree(audit_dir, ignore_errors=True)
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            continue  # a thread waiting for work is not a cost
        n = int(n_text)
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    print(f"{total} busy samples of extauthz serve --transport {args.transport} under h2load")
    print("inclusive:")
    for f, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {f[:120]}")
    print("self:")
    for f, n in own.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {f[:120]}")
    print(f"results: {raw} and {RESULTS / 'profile.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
