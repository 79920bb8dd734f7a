"""The container image: its Dockerfile's structure, and its command run in a plain venv.

No Docker engine runs here, so the structure is checked with a Dockerfile parser and the build
stage's RUN command and the final stage's ENTRYPOINT/CMD/HEALTHCHECK are executed as they
would be in the image, with the image paths mapped to a temporary directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from extauthz.devenv.net import free_port

dockerfile_parse = pytest.importorskip("dockerfile_parse")

REPO = Path(__file__).resolve().parents[2]
VENV = "/opt/extauthz"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [v for i, v in self.instructions if i == instruction]


def _stages() -> list[Stage]:
    parser = dockerfile_parse.DockerfileParser(str(REPO / "Dockerfile"))
    stages: list[Stage] = []
    for item in parser.structure:
        ins, value = item["instruction"], item["value"]
        if ins == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(name, words[0]))
        elif ins != "COMMENT" and stages:
            stages[-1].instructions.append((ins, value))
    return stages


def _args() -> dict[str, str]:
    parser = dockerfile_parse.DockerfileParser(str(REPO / "Dockerfile"))
    out = {}
    for item in parser.structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            k, _, v = item["value"].partition("=")
            out[k] = v
    return out


def _exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def _healthcheck_command(stage: Stage) -> tuple[list[str], list[str]]:
    (value,) = stage.values("HEALTHCHECK")
    options, sep, command = value.partition("CMD")
    assert sep, "HEALTHCHECK must use CMD"
    return options.split(), _exec_form(command.strip())


def _env(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in stage.values("ENV"):
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            out[k] = v
    return out


# ----------------------------------------------------------------------------- structure


def test_multi_stage_on_a_slim_python_base() -> None:
    stages = _stages()
    assert [s.name for s in stages] == ["build", "runtime"]
    base = _args()["PYTHON_IMAGE"]
    assert base.startswith("python:3.1") and "-slim" in base, base
    assert all(s.base == "${PYTHON_IMAGE}" for s in stages)


def test_runtime_stage_carries_no_build_tools_or_caches() -> None:
    runtime = _stages()[-1]
    copies = runtime.values("COPY")
    assert copies == [f"--from=build {VENV} {VENV}"], copies
    for run in runtime.values("RUN"):
        for forbidden in ("apt-get install", "apk add", "pip install", "gcc", "build-essential"):
            assert forbidden not in run, (forbidden, run)
    assert not runtime.values("ADD")
    env = _env(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # the root filesystem is read-only
    assert env["PATH"].startswith(f"{VENV}/bin:")
    build = _stages()[0]
    (install,) = build.values("RUN")
    assert "--no-cache-dir" in install and _env(build)["PIP_NO_CACHE_DIR"] == "1"
    assert "pip uninstall --yes pip setuptools" in install
    assert "compileall" in install


def test_non_root_user_signals_health_and_mounts() -> None:
    runtime = _stages()[-1]
    (user,) = runtime.values("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit() and int(gid) != 0
    assert runtime.values("STOPSIGNAL") == ["SIGTERM"]
    options, command = _healthcheck_command(runtime)
    assert command[:2] == ["extauthz", "healthcheck"]
    assert any(o.startswith("--timeout=") for o in options)
    entrypoint = _exec_form(runtime.values("ENTRYPOINT")[0])
    assert entrypoint == ["extauthz", "serve"]
    cmd = _exec_form(runtime.values("CMD")[0])
    assert cmd[cmd.index("--policies") + 1] == "/etc/extauthz/policies"
    assert cmd[cmd.index("--listen") + 1] == "0.0.0.0:9191"
    (volumes,) = runtime.values("VOLUME")
    assert set(_exec_form(volumes)) == {"/etc/extauthz/policies", "/etc/extauthz/bundles"}
    assert "9191" in runtime.values("EXPOSE")[0].split()


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**"  # everything out, then an allow-list
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "extauthz"}
    copied = {
        src
        for s in _stages()
        for v in s.values("COPY")
        if not v.startswith("--from")
        for src in v.split()[:-1]
    }
    assert copied <= allowed


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build stage's RUN, executed on a copy of the build context, into a fresh venv."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    for src in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / src, context / src)
    shutil.copytree(REPO / "extauthz", context / "extauthz",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "opt-extauthz"
    (run,) = _stages()[0].values("RUN")
    bindir = root / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {**os.environ, **_env(_stages()[0]), "PATH": f"{bindir}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(
        ["/bin/sh", "-c", run.replace(VENV, str(venv))],
        cwd=context, env=env, capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0 and "No matching distribution" in result.stderr:
        pytest.skip("no package index reachable for the image's build stage")
    assert result.returncode == 0, result.stderr[-3000:]
    return venv


def test_build_stage_leaves_a_venv_without_pip(image_venv: Path) -> None:
    assert (image_venv / "bin" / "extauthz").exists()
    assert not (image_venv / "bin" / "pip").exists()
    site = next(image_venv.glob("lib/python3*/site-packages"))
    assert not list(site.glob("pip")), "pip must not ship in the image"
    assert list((site / "extauthz").glob("__pycache__/pipeline.*.pyc")), "code is byte-compiled"


def test_image_command_serves_reports_health_and_drains(image_venv: Path, tmp_path: Path) -> None:
    runtime = _stages()[-1]
    port, metrics_port = free_port(), free_port()
    mapping = {
        "0.0.0.0:9191": f"127.0.0.1:{port}",
        "127.0.0.1:9191": f"127.0.0.1:{port}",
        "0.0.0.0:9090": f"127.0.0.1:{metrics_port}",
        "/etc/extauthz/policies": str(REPO / "policies"),
    }

    def mapped(words: list[str]) -> list[str]:
        return [mapping.get(w, w) for w in words]

    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    image_env = _env(runtime)
    env.update({k: v for k, v in image_env.items() if k != "PATH"})
    env["PATH"] = f"{image_venv}/bin:{os.environ['PATH']}"
    command = mapped(_exec_form(runtime.values("ENTRYPOINT")[0]) + _exec_form(runtime.values("CMD")[0]))
    _, health = _healthcheck_command(runtime)
    health = mapped(health)
    workdir = tmp_path / "workdir"  # WORKDIR: nothing is written there
    workdir.mkdir()
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                break
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.2)
        assert probe.stdout.strip() == "SERVING"
        service = subprocess.run([*health, "--service", "envoy.service.auth.v3.Authorization"],
                                 env=env, capture_output=True, text=True, timeout=30)
        assert service.returncode == 0 and service.stdout.strip() == "SERVING"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert b"extauthz_policy_generation 1.0" in r.read()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert "stopped" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(workdir.iterdir()) == []
    down = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
    assert down.returncode == 1  # nothing serving: the HEALTHCHECK fails
