"""Every YAML file under deploy/: it parses, and the fields that matter say what they should."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extauthz.policy import PolicyError, load_directory, load_text

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
ISTIO = DEPLOY / "istio"
ALL_YAML = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
# Prometheus rule files are no Kubernetes objects: tests/ship/test_observability.py checks them.
PROMETHEUS_YAML = {"prometheus/extauthz-rules.yaml", "prometheus/extauthz-rules.test.yaml"}


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _one(path: Path) -> dict[str, Any]:
    (doc,) = _docs(path)
    assert isinstance(doc, dict)
    return doc


def _container() -> dict[str, Any]:
    spec = _one(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return dict(container)


def test_every_yaml_file_is_covered_and_parses() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in ALL_YAML}
    assert names == {
        "kubernetes/kustomization.yaml",
        "kubernetes/namespace.yaml",
        "kubernetes/serviceaccount.yaml",
        "kubernetes/configmap-policies.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/service.yaml",
        "kubernetes/service-headless.yaml",
        "kubernetes/pdb.yaml",
        "kubernetes/hpa.yaml",
        "kubernetes/optional/networkpolicy.yaml",
        "istio/mesh/istio-operator.yaml",
        "istio/mesh/authorizationpolicy-custom.yaml",
        *PROMETHEUS_YAML,
    }, "a new manifest needs its checks here"
    for path in ALL_YAML:
        if str(path.relative_to(DEPLOY)) in PROMETHEUS_YAML:
            continue
        for doc in _docs(path):
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


# grpc probes are GA from Kubernetes 1.27; check against that and the newest schemas known.
KUBERNETES_VERSIONS = ("1.27", "latest")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_match_the_api_schema(version: str) -> None:
    """Strict: an unknown or misspelt field (``readOnlyRootFileSystem``) fails."""
    kv = pytest.importorskip("kubernetes_validate")
    target = kv.latest_version() if version == "latest" else version
    checked = 0
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in _docs(path):
            if doc["kind"] == "Kustomization":
                continue
            kv.validate(doc, target, strict=True)
            checked += 1
    assert checked == 9
    broken = _one(K8S / "deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, target, strict=True)


def test_kustomization_lists_every_kubernetes_manifest_in_one_namespace() -> None:
    kustomization = _one(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    for name in listed:
        doc = _one(K8S / name)
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == kustomization["namespace"]
            assert doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        else:
            assert doc["metadata"]["namespace"] == kustomization["namespace"], name


def test_deployment_probes_use_grpc_health() -> None:
    c = _container()
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    assert f"--listen=0.0.0.0:{grpc_port}" in c["args"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == grpc_port, probe
    assert c["readinessProbe"]["grpc"]["service"] == "envoy.service.auth.v3.Authorization"
    # Draining: the preStop pause plus extauthz's own 5 s drain fit in the grace period.
    pod = _one(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 5 + 5


def test_deployment_security_context() -> None:
    pod = _one(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = _container()["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sc["capabilities"]


def test_deployment_resources_are_sized() -> None:
    res = _container()["resources"]
    assert res["requests"] == {"cpu": "500m", "memory": "128Mi"}
    assert res["limits"] == {"memory": "256Mi"}  # no CPU limit: no throttling into latency


def test_deployment_mounts_policies_as_a_directory_and_the_spiffe_socket() -> None:
    pod = _one(K8S / "deployment.yaml")["spec"]["template"]["spec"]
    c = _container()
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    policies = mounts["policies"]
    assert "subPath" not in policies  # a subPath mount never sees ConfigMap updates
    assert policies["readOnly"] is True
    assert f"--policies={policies['mountPath']}" in c["args"]
    cm = _one(K8S / "configmap-policies.yaml")
    assert volumes["policies"]["configMap"]["name"] == cm["metadata"]["name"]
    spiffe = volumes["spiffe-workload-api"]["csi"]
    assert spiffe == {"driver": "csi.spiffe.io", "readOnly": True}
    socket = next(e["value"] for e in c["env"] if e["name"] == "SPIFFE_ENDPOINT_SOCKET")
    assert socket.startswith("unix://" + mounts["spiffe-workload-api"]["mountPath"] + "/")
    assert all(m.get("readOnly") for n, m in mounts.items() if n != "tmp")


def test_services_and_pdb_select_the_pods() -> None:
    deployment = _one(K8S / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    for name in ("service.yaml", "service-headless.yaml"):
        svc = _one(K8S / name)["spec"]
        assert svc["selector"].items() <= labels.items(), name
        grpc = next(p for p in svc["ports"] if p["name"] == "grpc")
        assert grpc["targetPort"] == "grpc" and grpc["appProtocol"] == "grpc"
        assert grpc["port"] == ports["grpc"]
    assert _one(K8S / "service-headless.yaml")["spec"]["clusterIP"] == "None"
    pdb = _one(K8S / "pdb.yaml")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = _one(K8S / "hpa.yaml")["spec"]
    assert pdb["spec"]["maxUnavailable"] == 1 < hpa["minReplicas"] - 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_optional_network_policy_admits_only_checks_and_scrapes() -> None:
    netpol = _one(K8S / "optional" / "networkpolicy.yaml")
    labels = _one(K8S / "deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    spec = netpol["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    assert spec["egress"] == []
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    allowed = sorted(p["port"] for rule in spec["ingress"] for p in rule["ports"])
    assert allowed == sorted([ports["grpc"], ports["metrics"]])
    assert all(rule["from"] and "namespaceSelector" in rule["from"][0] for rule in spec["ingress"])
    assert "optional/networkpolicy.yaml" not in _one(K8S / "kustomization.yaml")["resources"]


def test_policy_configmap_matches_the_example_policies_and_loads(tmp_path: Path) -> None:
    data = _one(K8S / "configmap-policies.yaml")["data"]
    examples = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "policies").glob("*.yaml")}
    assert data == examples
    for name, text in data.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    policies = load_directory(tmp_path)
    assert {p.ref for p in policies.authorization} == {
        "istio-system/deny-admin", "istio-system/health-open", "shop/frontend-to-api"
    }


def test_istio_extension_provider_points_at_the_service_and_fails_closed() -> None:
    op = _one(ISTIO / "mesh" / "istio-operator.yaml")
    assert op["apiVersion"] == "install.istio.io/v1alpha1" and op["kind"] == "IstioOperator"
    (provider,) = op["spec"]["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    svc = _one(K8S / "service.yaml")
    assert grpc["service"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] == next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["failOpen"] is False
    assert grpc["statusOnError"] == "403"
    assert grpc["timeout"].endswith("s")
    custom = _one(ISTIO / "mesh" / "authorizationpolicy-custom.yaml")
    assert custom["apiVersion"] == "security.istio.io/v1"
    assert custom["spec"]["action"] == "CUSTOM"
    assert custom["spec"]["provider"]["name"] == provider["name"]
    assert custom["spec"]["rules"] == [{}]  # every request of the selected workload


def test_the_mesh_custom_policy_is_refused_by_extauthz() -> None:
    """The Istio CUSTOM policy is mesh configuration; extauthz's own loader refuses it."""
    text = (ISTIO / "mesh" / "authorizationpolicy-custom.yaml").read_text(encoding="utf-8")
    with pytest.raises(PolicyError, match="action CUSTOM is refused"):
        load_text(text, "authorizationpolicy-custom.yaml")


def test_measure_script_documents_itself() -> None:
    """deploy/measure.py (the sizing measurement) starts, explains its flags, and the bench code
    it loads is there."""
    out = subprocess.run(
        [sys.executable, str(DEPLOY / "measure.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    assert "--seconds" in out and "RSS" in out
    common = _measure().bench_common()
    for name in ("free_port", "started", "cpu_seconds", "load_grpc", "check_request_bytes", "need"):
        assert callable(getattr(common, name)), name


def _measure() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_measure", DEPLOY / "measure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load (nghttp2-client) is not installed")
def test_measure_script_measures() -> None:
    """A real 1 s measurement: the service answers every call and the figures are plausible."""
    run = subprocess.run(
        [sys.executable, str(DEPLOY / "measure.py"), "--seconds", "1", "--connections", "2",
         "--streams", "4"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    result = json.loads(run.stdout)
    assert result["checks"] > 0 and result["failed"] == 0
    assert result["checks_per_s"] > 0
    assert result["server_cpu_s"] > 0 and result["cpu_ms_per_1000_checks"] > 0
    assert 0 < result["rss_idle_mib"] <= result["rss_peak_mib"] < 1024


def test_hpa_scales_the_deployment_on_cpu_as_measured() -> None:
    """The HPA targets the Deployment, owns its replica count, and its target matches the
    measured CPU per check (deploy/measure.py's cpu_ms_per_1000_checks) and the CPU request."""
    deployment = _one(K8S / "deployment.yaml")
    hpa = _one(K8S / "hpa.yaml")
    spec = hpa["spec"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert spec["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"], "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert "replicas" not in deployment["spec"]  # a re-apply would reset the HPA's count
    assert 3 <= spec["minReplicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    target = metric["resource"]["target"]
    assert target["type"] == "Utilization" and 50 <= target["averageUtilization"] <= 80
    # Utilization is relative to the request: one must be set.
    request_m = int(_container()["resources"]["requests"]["cpu"].removesuffix("m"))
    notes = hpa["metadata"]["annotations"]
    cpu_ms_per_check = float(notes["extauthz.io/cpu-ms-per-1000-checks"]) / 1000
    at_target = request_m * target["averageUtilization"] / 100 / cpu_ms_per_check
    assert abs(at_target - int(notes["extauthz.io/checks-per-pod-at-target"])) / at_target < 0.05
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"{float(notes['extauthz.io/cpu-ms-per-1000-checks']):.0f} ms per 1,000 checks" in readme
    # Scale up at once, down slowly.
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
