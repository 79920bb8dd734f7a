"""Shared bench machinery: processes, h2load runs with percentiles, CPU accounting, results.

Every load run is bounded (h2load ``-D SECONDS``); every server started here is stopped in a
``finally``. Results go to ``bench/results/NAME.json`` and ``NAME.png`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:  # bench/bodies.py, also when this file is loaded by path
    sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results"
CHECK_PATH = "/envoy.service.auth.v3.Authorization/Check"
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The bin/ directory of the Python running the bench (the venv's, with `.venv/bin/python`): the
# console scripts installed next to it (h2corn, py-spy, extauthz) are found there first, so
# `make bench-*` and `.venv/bin/python bench/run.py ...` work without the venv on PATH.
SCRIPTS = str(Path(sys.executable).parent)


def search_path(path: str | None = None) -> str:
    """``path`` (default: $PATH) with the running interpreter's bin/ directory in front."""
    rest = [p for p in (path if path is not None else os.environ.get("PATH", "")).split(os.pathsep) if p]
    return os.pathsep.join([SCRIPTS, *(p for p in rest if p != SCRIPTS)])


def which(tool: str) -> str | None:
    """``shutil.which`` that also looks next to the running interpreter (the venv's bin/)."""
    return shutil.which(tool, path=search_path())


def need(tool: str, package: str) -> None:
    if not which(tool):
        sys.exit(f"{tool} is missing: apt-get install -y {package}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


# --------------------------------------------------------------------------- CPU accounting


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and all its live descendants."""
    total = 0
    for p in _descendants(pid):
        try:
            fields = (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1]).split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / CLK_TCK


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid


@contextmanager
def started(
    name: str,
    cmd: Sequence[str],
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    ready: Any = None,
    timeout: float = 30.0,
) -> Iterator[Proc]:
    """Run ``cmd`` (own process group) until the block ends; wait for ``port`` or ``ready()``."""
    log = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    full_env["PATH"] = search_path(full_env.get("PATH"))  # Popen looks ``cmd[0]`` up in env's PATH
    full_env.update(env or {})
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=full_env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    proc = Proc(name, popen, log)
    try:
        if port is not None:
            wait_port(port, timeout, popen)
        if ready is not None:
            deadline = time.monotonic() + timeout
            while not ready():
                if popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
        time.sleep(0.3)
        yield proc
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
        log.unlink(missing_ok=True)


# --------------------------------------------------------------------------- requests


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def check_request_bytes(*, allowed: bool = True, token: bool = True, i: int = 0) -> bytes:
    """A realistic CheckRequest: SPIFFE principal, ~10 headers, a ~600-byte bearer JWT (the
    ``i``-th of its kind: request id, time and trace headers differ with ``i``, bench/bodies.py)."""
    from bodies import BEARER, check_request

    return check_request(
        i, path="/api/items" if allowed else "/admin/users", token=BEARER if token else None, marker=False
    )


# --------------------------------------------------------------------------- pinning

# ``--pin`` (the loads' default on a machine with 2 or more CPUs): the server under test and
# everything it runs (workers, audit writer) on CPU 0, the load generator on CPU 1.
PIN: dict[str, str] = {}


def set_pinning(on: bool) -> None:
    PIN.clear()
    if on and (os.cpu_count() or 1) >= 2 and which("taskset"):
        PIN.update({"server": "0", "load": "1"})


def pinned(cmd: Sequence[str], who: str = "server") -> list[str]:
    """``cmd`` under ``taskset -c CPU`` when pinning is on."""
    cpu = PIN.get(who)
    return ["taskset", "-c", cpu, *cmd] if cpu is not None else list(cmd)


# --------------------------------------------------------------------------- h2load


@dataclass
class Load:
    rps: float = 0.0
    ok: int = 0
    failed: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def percentiles(durations_us: list[int]) -> tuple[float, float, float]:
    if not durations_us:
        return 0.0, 0.0, 0.0
    d = sorted(durations_us)
    p = lambda q: d[min(len(d) - 1, int(q * len(d)))] / 1000.0  # noqa: E731
    return p(0.50), p(0.99), sum(d) / len(d) / 1000.0


def h2load(
    url: str,
    *,
    seconds: float,
    conns: int = 4,
    streams: int = 16,
    body: bytes | None = None,
    bodies: Any = None,
    headers: Sequence[str] = (),
    rate: float | None = None,
    warmup: float = 1.0,
) -> Load:
    """Run h2load for ``seconds`` (plus warm-up). ``rate``: open loop, total requests/s.

    ``body``: the same bytes every request; ``bodies`` (a ``bodies.BodySet``, gRPC-framed here):
    a different body every request (bench/bodies.py)."""
    need("h2load", "nghttp2-client")
    env = None
    with tempfile.TemporaryDirectory() as tmp:
        cmd = pinned(["h2load", "-t", "1", "-c", str(conns), "-m", str(streams)], "load")
        if bodies is not None:
            data, extra = bodies.files(Path(tmp))
            env = {**os.environ, **extra}
            cmd += ["-d", str(data)]
        elif body is not None:
            (Path(tmp) / "body").write_bytes(body)
            cmd += ["-d", f"{tmp}/body"]
        for h in headers:
            cmd += ["-H", h]
        if rate:
            cmd += ["--rps", str(max(1, round(rate / conns)))]
        cmd.append(url)
        if warmup:  # a separate short run: h2load's own --warm-up-time trips some servers
            subprocess.run(
                [*cmd, "-D", str(max(1, round(warmup)))],
                capture_output=True,
                timeout=warmup + 60,
                env=env,
            )
        cmd += ["-D", str(max(1, round(seconds))), "--log-file", f"{tmp}/log"]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env)
        out = run.stdout
        durations: list[int] = []
        statuses: dict[str, int] = {}
        try:
            for line in (Path(tmp) / "log").read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 3:
                    statuses[parts[1]] = statuses.get(parts[1], 0) + 1
                    durations.append(int(parts[2]))
        except FileNotFoundError:
            pass
    m = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
    failed = re.search(r"(\d+) failed", out)
    ok = re.search(r"status codes: (\d+) 2xx", out)
    p50, p99, mean = percentiles(durations)
    if not m:
        print(f"h2load produced no result: {run.stderr[-500:] or out[-500:]}", file=sys.stderr)
    return Load(
        rps=float(m.group(2)) if m else 0.0,
        ok=int(ok.group(1)) if ok else 0,
        failed=int(failed.group(1)) if failed else -1,
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        extra={"statuses": statuses},
    )


GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def load_grpc(port: int, body: Any, **kw: Any) -> Load:
    """h2load Check calls: ``body`` is one CheckRequest's bytes or a ``bodies.BodySet``."""
    url = f"http://127.0.0.1:{port}{CHECK_PATH}"
    if isinstance(body, bytes | bytearray):
        return h2load(url, body=grpc_frame(body), headers=GRPC_HEADERS, **kw)
    return h2load(url, bodies=body, headers=GRPC_HEADERS, **kw)


def measure(pids: Mapping[str, int], run: Any, warm: Any = None) -> tuple[Load, dict[str, float]]:
    """Call ``run()`` and return its Load and the CPU seconds each named process used meanwhile.

    ``load`` in the split is h2load's CPU (from this process's reaped children)."""
    if warm is not None:
        warm()
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    ru0 = os.times()
    t0 = time.monotonic()
    load = run()
    wall = time.monotonic() - t0
    ru1 = os.times()
    split = {k: round(cpu_seconds(p) - before[k], 2) for k, p in pids.items()}
    split["load"] = round(
        (ru1.children_user - ru0.children_user) + (ru1.children_system - ru0.children_system), 2
    )
    split["wall"] = round(wall, 2)
    return load, split


# --------------------------------------------------------------------------- results


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths, strict=True))
        )
    ]
    for row in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def save(
    name: str,
    rows: list[dict[str, Any]],
    columns: Sequence[str],
    *,
    meta: dict[str, Any],
    chart_value: str = "rps",
    chart_label: str = "requests/s",
    title: str = "",
) -> Path:
    """Print the table, write ``bench/results/NAME.json`` and a bar chart ``NAME.png``."""
    print(table(rows, columns))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2, default=str))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (pip install matplotlib)", file=sys.stderr)
        return out
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    labels = [str(r.get("name", i)) for i, r in enumerate(rows)]
    values = [float(r.get(chart_value) or 0) for r in rows]
    bars = ax.bar(labels, values, color="#4477aa")
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel(chart_label)
    ax.set_title(title or name)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=100)
    plt.close(fig)
    print(f"results: {out} and {RESULTS / (name + '.png')}")
    return out


def row(name: str, load: Load, split: dict[str, float] | None = None, **more: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"name": name, **{k: v for k, v in asdict(load).items() if k != "extra"}}
    r["statuses"] = load.extra.get("statuses", {})
    if split:
        r["cpu"] = split
        done = load.rps * split.get("wall", 0.0)
        if done:
            # CPU microseconds per request of each process: robust when the cores are shared.
            r["us_per_req"] = {k: round(v / done * 1e6, 1) for k, v in split.items() if k != "wall"}
    r.update(more)
    return r


def grpc_point(
    pids: Mapping[str, int], port: int, body: Any, seconds: float, **kw: Any
) -> tuple[Load, dict[str, float]]:
    """One measured h2load point at a gRPC server: 1 s warm-up, then ``seconds`` measured,
    with the CPU split of the measured window only."""
    return measure(
        pids,
        lambda: load_grpc(port, body, seconds=seconds, warmup=0, **kw),
        warm=lambda: load_grpc(port, body, seconds=1, warmup=0, **kw),
    )


def per_core(load: Load, split: Mapping[str, float], who: str = "server") -> float:
    """Requests/s per fully used core of ``who``: rps x wall / CPU seconds."""
    cpu = split.get(who) or 0.0
    return load.rps * split.get("wall", 0.0) / cpu if cpu else 0.0
