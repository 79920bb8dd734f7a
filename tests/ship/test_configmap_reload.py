"""Hot reload through a Kubernetes ConfigMap volume's atomic ``..data`` symlink swap.

The kubelet writes a ConfigMap volume like this (its AtomicWriter)::

    ..2026_11_23_11_00_00.000000001/        the files of one version
    ..data -> ..2026_11_23_11_00_00.000000001
    policy.yaml -> ..data/policy.yaml       one link per key, made once

An update writes a new timestamped directory, points ``..data_tmp`` at it, renames ``..data_tmp``
over ``..data`` (the atomic step) and removes the old directory. The policy files themselves never
change, only what their links resolve to; the watcher must still reload.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers import ExtauthzProcess

from extauthz.tools.samples import check_request

REPO = Path(__file__).resolve().parents[2]

ONLY_ORDERS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-to-api
  namespace: shop
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["example.org/ns/shop/sa/frontend"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/api/orders"]
"""

DENY_INTRUDER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-intruder
  namespace: istio-system
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["example.org/ns/shop/sa/intruder"]
"""


class ConfigMapVolume:
    """A directory written the way the kubelet writes a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0
        self.current: Path | None = None

    def write(self, files: Mapping[str, str]) -> None:
        self.version += 1
        stamp = self.root / f"..2026_11_23_11_00_00.{self.version:09d}"
        stamp.mkdir()
        for name, text in files.items():
            (stamp / name).write_text(text, encoding="utf-8")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(stamp.name)
        os.rename(tmp, self.root / "..data")  # the atomic swap
        for name in files:  # user-visible links: created once per key
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        for name in os.listdir(self.root):  # keys that went away
            link = self.root / name
            if link.is_symlink() and not name.startswith("..") and name not in files:
                link.unlink()
        if self.current is not None:
            for f in self.current.iterdir():
                f.unlink()
            self.current.rmdir()
        self.current = stamp


def _decide(grpc_check: Callable[..., Any], target: str, path: str, who: str = "frontend") -> int:
    req = check_request(
        path=path, principal=f"spiffe://example.org/ns/shop/sa/{who}", request_id=f"{who}{path}"
    )
    return int(grpc_check(target, req).status.code)


def _wait(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_configmap_symlink_swap_reloads(tmp_path: Path, grpc_check: Callable[..., Any]) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    examples = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "policies").glob("*.yaml")}
    volume.write(examples)
    with ExtauthzProcess(volume.root, tmp_path / "run").start() as authz:
        target = authz.grpc_target
        assert _decide(grpc_check, target, "/api/items") == 0  # allowed by v1
        assert _decide(grpc_check, target, "/api/orders") == 0

        # v2: a changed key (only /api/orders now) and a new key.
        volume.write({**examples, "20-frontend-to-api.yaml": ONLY_ORDERS,
                      "30-deny-intruder.yaml": DENY_INTRUDER})
        assert _wait(lambda: _decide(grpc_check, target, "/api/items") != 0), "v2 never loaded"
        assert _decide(grpc_check, target, "/api/orders") == 0
        assert (volume.root / "30-deny-intruder.yaml").is_symlink()

        # v3: a broken edit is refused; v2 keeps serving.
        volume.write({**examples, "20-frontend-to-api.yaml": ONLY_ORDERS + "  bogus: 1\n"})
        assert _wait(lambda: "policy reload refused" in authz.stderr_text())
        assert _decide(grpc_check, target, "/api/items") != 0
        assert _decide(grpc_check, target, "/api/orders") == 0

        # v4: back to the examples (a key removed): /api/items is allowed again.
        volume.write(examples)
        assert _wait(lambda: _decide(grpc_check, target, "/api/items") == 0), "v4 never loaded"
        assert not (volume.root / "30-deny-intruder.yaml").exists()
        assert sorted(p.name for p in volume.root.iterdir() if not p.name.startswith("..")) == sorted(
            examples
        )
