"""Request bodies that differ from one request to the next, as in production.

Every CheckRequest Envoy sends differs in its request id, its time and its trace headers, so a
bench that repeats one body could be served by a cache keyed on raw bytes. ``body_set`` builds
``n`` CheckRequests of one kind that differ in exactly those fields (``x-request-id`` and
``http.id``, ``attributes.request.time``, ``traceparent``, ``x-b3-traceid``/``x-b3-spanid``) and
optionally in the bearer token (one per body: a token never seen before), all of the same length;
``h2load`` then sends them in turn through the LD_PRELOAD shim ``varybody.c``, which also writes a
per-request counter into ``x-request-id``: no two requests of a run are byte-for-byte equal.

Without a C compiler the shim cannot be built: h2load then repeats the first body (said on stderr,
and ``varied: false`` in the results).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "@@RQ@@@@@@@@@@@@"  # 16 characters, overwritten per request by varybody.c
BUILD = HERE / "results" / ".build"

BEARER = (
    # A ~600-byte RS256-shaped JWT (header.payload.signature). Not verified by the default
    # policies: it makes the request as large as a real one.
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImJlbmNoLWtleS0xIiwidHlwIjoiSldUIn0."
    "eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlLm9yZyIsInN1YiI6InVzZXItMTIzNDU2Nzg5MCIsImF1ZCI6"
    "WyJhcGkuZXhhbXBsZS5vcmciXSwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDAsImdyb3VwcyI6WyJk"
    "ZXZlbG9wZXJzIiwicmVhZGVycyJdLCJzY29wZSI6InJlYWQ6aXRlbXMgd3JpdGU6aXRlbXMifQ." + "A" * 342
)


def check_request(
    i: int, *, path: str = "/api/items", token: str | None = BEARER, marker: bool = True
) -> bytes:
    """The ``i``-th realistic CheckRequest (SPIFFE principal, ~10 headers, ``token`` as a bearer
    token): request id, time and trace ids are functions of ``i``; every length is fixed."""
    from extauthz.tools.samples import check_request as sample

    digest = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
    trace, span = digest[:32], digest[32:48]
    request_id = f"{digest[48:52]}{i:012x}-{MARKER}" if marker else f"{digest[48:52]}{i:012x}-{digest[:16]}"
    headers = {
        "user-agent": "bench/1.0",
        "accept": "application/json",
        "traceparent": f"00-{trace}-{span}-01",
        "x-b3-traceid": trace,
        "x-b3-spanid": span,
        "x-b3-sampled": "1",
        "content-type": "application/json",
        "accept-encoding": "gzip",
        "x-forwarded-proto": "https",
        "x-envoy-expected-rq-timeout-ms": "250",
    }
    if token is not None:
        headers["authorization"] = "Bearer " + token
    msg = sample(path=path, headers=headers, certificate="", request_id=request_id)
    # The time Envoy saw the request: seconds and nanos of fixed varint lengths (5 bytes each).
    now = int(time.time())
    msg.attributes.request.time.seconds = now + i // 20000
    msg.attributes.request.time.nanos = (1 << 28) + (i * 7919 % 700_000_000)
    return bytes(msg.SerializeToString())


@dataclass
class BodySet:
    """``bodies`` (equal lengths, unframed) and what h2load needs to send them in turn."""

    name: str
    bodies: list[bytes]

    def __post_init__(self) -> None:
        sizes = {len(b) for b in self.bodies}
        if len(sizes) != 1:
            raise ValueError(f"{self.name}: bodies of different lengths {sorted(sizes)}")

    @property
    def first(self) -> bytes:
        return self.bodies[0]

    def files(self, tmp: Path) -> tuple[Path, dict[str, str]]:
        """Write the -d file and the bodies file into ``tmp``: (the -d file, env for h2load)."""
        from _common import grpc_frame

        framed = [grpc_frame(b) for b in self.bodies]
        data = tmp / "body"
        data.write_bytes(framed[0])
        shim = shim_library()
        if shim is None or len(self.bodies) < 1:
            return data, {}
        all_bodies = tmp / "bodies"
        all_bodies.write_bytes(b"".join(framed))
        env = {
            "LD_PRELOAD": str(shim),
            "BENCH_BODIES": str(all_bodies),
            "BENCH_BODY_SIZE": str(len(framed[0])),
            "BENCH_DATA_FILE": str(data),
        }
        return data, env


_shim: Path | bool | None = False


def shim_library() -> Path | None:
    """Build varybody.c once per source version (cached under bench/results/.build)."""
    global _shim
    if _shim is not False:
        return _shim  # type: ignore[return-value]
    src = HERE / "varybody.c"
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    out = BUILD / f"varybody-{hashlib.sha256(src.read_bytes()).hexdigest()[:12]}.so"
    if out.exists():
        _shim = out
        return out
    if cc is None:
        print("no C compiler: h2load repeats one body (bench/varybody.c not built)", file=sys.stderr)
        _shim = None
        return None
    BUILD.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    run = subprocess.run(
        [cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src), "-ldl"], capture_output=True, text=True
    )
    if run.returncode != 0:
        print(f"cannot build bench/varybody.c: {run.stderr[-500:]}", file=sys.stderr)
        _shim = None
        return None
    tmp.replace(out)
    _shim = out
    return out


def body_set(
    name: str, n: int = 1024, *, path: str = "/api/items", tokens: Sequence[str | None] = (BEARER,)
) -> BodySet:
    """``n`` requests of one kind; ``tokens`` taken in turn (one per body: never seen twice)."""
    return BodySet(name, [check_request(i, path=path, token=tokens[i % len(tokens)]) for i in range(n)])
