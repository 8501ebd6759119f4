"""Kubernetes and KServe manifests: every core object round-trips through the official
``kubernetes`` client's models unchanged (a misspelled or unknown field would be dropped, a
missing required one refused); the InferenceService is checked against a JSON schema written
from KServe's documented v1beta1 fields, its pod parts through the same core models.

Why a schema and not the KServe SDK: the SDK (+263 MB) ships no CRD schema either; its
generated models drop unknown keys like the core ones, and under kubernetes 37 serialise
snake_case. The schema below is strict (no field outside KServe's documented PredictorSpec:
ComponentExtensionSpec + the embedded PodSpec), and what it cannot type (containers, volumes,
the pod security context) is checked by the core models KServe embeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import nbdeploy as nbd
from nbdeploy import manifests
from nbdeploy._errors import DeployError, InputError
from nbdeploy.routing import Routing
from nbdeploy.runtimes.docker import TMPFS
from nbdeploy.runtimes.image import USER_ID
from nbdeploy.store import Store, now
from nbdeploy.vocabulary import ServerSettings

SHA = "ab12" * 16
DIGEST = "sha256:" + "cd" * 32
REGISTRY = "127.0.0.1:5000/team"


def record_push(name: str, version: int = 1, settings: ServerSettings | None = None) -> None:
    Store().add_push(
        name=name,
        version=version,
        sha256=SHA,
        registry=REGISTRY,
        reference=f"{REGISTRY}/nbdeploy-{name}:{version}-{SHA[:12]}",
        digest=DIGEST,
        settings=(settings or ServerSettings()).to_dict(),
    )


def round_trip(obj: dict[str, Any], model: str) -> None:
    """The object, read into the client's model and written back, is unchanged."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    parsed = client._ApiClient__deserialize(json.loads(json.dumps(obj)), model)
    assert client.sanitize_for_serialization(parsed) == obj


CORE_MODELS = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "HorizontalPodAutoscaler": "V2HorizontalPodAutoscaler",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# KServe v1beta1, from its documented API: InferenceService > InferenceServiceSpec >
# PredictorSpec (ComponentExtensionSpec fields, the embedded PodSpec, the model frameworks).
PREDICTOR_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": STRING_MAP,
    "annotations": STRING_MAP,
    "logger": {"type": "object"},
    "batcher": {"type": "object"},
    "deploymentStrategy": {"type": "object"},
    "containers": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    "volumes": {"type": "array", "items": {"type": "object"}},
    "securityContext": {"type": "object"},
    "automountServiceAccountToken": {"type": "boolean"},
    "serviceAccountName": {"type": "string"},
    "imagePullSecrets": {"type": "array"},
    "nodeSelector": STRING_MAP,
    "tolerations": {"type": "array"},
    "affinity": {"type": "object"},
}
INFERENCE_SERVICE_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": STRING_MAP,
                "annotations": STRING_MAP,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["predictor"],
            "properties": {
                "predictor": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": PREDICTOR_FIELDS,
                },
                "transformer": {"type": "object"},
                "explainer": {"type": "object"},
            },
        },
    },
}


def check_inference_service(obj: dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(obj, INFERENCE_SERVICE_SCHEMA)
    round_trip(obj["metadata"], "V1ObjectMeta")
    predictor = obj["spec"]["predictor"]
    for container in predictor["containers"]:
        round_trip(container, "V1Container")
    for volume in predictor.get("volumes", []):
        round_trip(volume, "V1Volume")
    round_trip(predictor["securityContext"], "V1PodSecurityContext")
    annotations = obj["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert predictor["containers"][0]["name"] == "kserve-container"


def check_container(container: dict[str, Any], settings: ServerSettings) -> None:
    """The local container's contract, Kubernetes-style."""
    security = container["securityContext"]
    assert security == {
        "runAsNonRoot": True,
        "runAsUser": USER_ID,
        "runAsGroup": USER_ID,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["image"].startswith(REGISTRY + "/nbdeploy-")
    assert container["image"].endswith("@" + DIGEST)  # pinned by digest
    assert container["args"] == settings.server_args()
    env = {item["name"]: item for item in container["env"]}
    assert env["NBDEPLOY_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert "value" not in env["NBDEPLOY_TOKEN"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert container["resources"]["requests"]["memory"] == "1Gi"


def test_deployment_objects_round_trip_and_match_the_local_container(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes", reason="pip install 'kubernetes>=35,<37' (test extra)")
    settings = ServerSettings(max_batch_size=16, threads=2)
    record_push("digits", settings=settings)
    result = nbd.kubernetes("digits", kind="deployment", output_dir=tmp_path, max_replicas=6)
    kinds = [obj["kind"] for obj in result.objects]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    for obj in result.objects:
        round_trip(obj, CORE_MODELS[obj["kind"]])
    deployment, service, hpa, pdb = result.objects
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["volumes"] == [
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    ]
    assert "size=64m" in TMPFS["/tmp"]  # the local container's /tmp, same size
    check_container(pod["spec"]["containers"][0], settings)
    # two threads locally, no benchmark: two cores requested
    assert pod["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "2000m"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["maxReplicas"] == 6
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pdb["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]

    import yaml

    assert result.path == tmp_path / "digits-deployment.yaml"
    assert list(yaml.safe_load_all(result.path.read_text())) == result.objects
    assert result.kubectl()[-1] == f"kubectl apply -f {result.path}"
    assert "create secret generic nbdeploy-digits-token" in result.kubectl()[0]
    assert "secret" not in result.yaml().lower().replace("secretkeyref", "")


def test_inference_service_matches_kserve_v1beta1(tmp_path: Path) -> None:
    pytest.importorskip("kubernetes", reason="pip install 'kubernetes>=35,<37' (test extra)")
    record_push("digits")
    result = nbd.kubernetes("digits", kind="kserve", namespace="models", min_replicas=2)
    assert len(result.objects) == 1
    service = result.objects[0]
    check_inference_service(service)
    predictor = service["spec"]["predictor"]
    assert predictor["minReplicas"] == 2 and predictor["scaleMetric"] == "cpu"
    assert "canaryTrafficPercent" not in predictor
    assert service["metadata"]["namespace"] == "models"
    check_container(predictor["containers"][0], ServerSettings())
    assert result.kubectl()[-1].startswith("kubectl -n models apply -f ")
    import jsonschema

    broken = json.loads(json.dumps(service))
    broken["spec"]["predictor"]["minReplica"] = 1  # a misspelling is refused
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, INFERENCE_SERVICE_SCHEMA)


def test_kserve_canary_follows_the_local_routing() -> None:
    pytest.importorskip("kubernetes", reason="pip install 'kubernetes>=35,<37' (test extra)")
    routing = Routing("digits", stable=1, weights={1: 80, 2: 20}).to_json()
    with Store().transaction() as conn:
        conn.execute(
            "INSERT INTO routes (name, routing, admin_token, updated_at) VALUES (?, ?, ?, ?)",
            ("digits", json.dumps(routing), "admin", now()),
        )
    record_push("digits", version=1)
    with pytest.raises(DeployError, match="v2 .*never pushed"):
        nbd.kubernetes("digits", kind="kserve")
    record_push("digits", version=2)
    result = nbd.kubernetes("digits", kind="kserve")
    check_inference_service(result.objects[0])
    predictor = result.objects[0]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert predictor["containers"][0]["image"].endswith("@" + DIGEST)
    assert any("canary" in note for note in result.notes)
    plain = nbd.kubernetes("digits", kind="deployment")
    assert plain.objects[0]["metadata"]["labels"]["app.kubernetes.io/version"] == "v1"


def test_cpu_request_rule() -> None:
    report = {
        "results": [
            {"batch_size": 1, "concurrency": 1, "p50_ms": 2.0, "throughput": 400.0},
            {"batch_size": 1, "concurrency": 8, "p50_ms": 6.0, "throughput": 1300.0},
        ]
    }
    # 1300 req/s x 2 ms alone = 2.6 cores -> 2600m
    assert manifests.cpu_request(ServerSettings(), report)[0] == 2600
    assert manifests.cpu_request(ServerSettings(cpus=2), report)[0] == 2000  # capped
    assert manifests.cpu_request(ServerSettings(), None)[0] == 1000
    assert manifests.cpu_request(ServerSettings(threads=3), None)[0] == 3000
    tiny = {"results": [{"batch_size": 1, "concurrency": 1, "p50_ms": 0.1, "throughput": 50.0}]}
    assert manifests.cpu_request(ServerSettings(), tiny)[0] == 100


def test_memory_units_and_inputs_are_checked() -> None:
    assert manifests.k8s_memory("1g") == "1Gi"
    assert manifests.k8s_memory("512m") == "512Mi"
    assert manifests.k8s_memory("1.5g") == "1.5Gi"
    with pytest.raises(InputError):
        manifests.k8s_memory("lots")
    with pytest.raises(DeployError, match="never pushed"):
        nbd.kubernetes("nothing")
    record_push("digits")
    with pytest.raises(InputError, match="kind"):
        nbd.kubernetes("digits", kind="helm")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="replicas"):
        nbd.kubernetes("digits", min_replicas=3, max_replicas=2)


def test_fallback_yaml_writer_reads_back_as_the_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import yaml

    record_push("digits")
    objects = nbd.kubernetes("digits", kind="deployment").objects
    real_import = builtins.__import__

    def no_yaml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError("no yaml")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    text = "---\n".join(manifests.to_yaml(obj) for obj in objects)
    monkeypatch.undo()
    assert list(yaml.safe_load_all(text)) == objects
    assert manifests.to_yaml({"a": [], "b": {}, "c": [{"d": None, "e": True}]}) == (
        "a: []\nb: {}\nc:\n- d: null\n  e: true\n"
    )


def test_cli_k8s_prints_or_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from nbdeploy.cli import main

    record_push("digits")
    assert main(["k8s", "digits", "--kserve"]) == 0
    printed = capsys.readouterr()
    assert yaml.safe_load(printed.out)["kind"] == "InferenceService"
    assert "CPU request" in printed.err
    assert main(["k8s", "digits", "-o", str(tmp_path), "--max-replicas", "3"]) == 0
    out = capsys.readouterr().out
    assert f"kubectl apply -f {tmp_path / 'digits-deployment.yaml'}" in out
    assert (tmp_path / "digits-deployment.yaml").is_file()
    assert main(["k8s", "unknown"]) == 2
    assert "never pushed" in capsys.readouterr().err


def test_k8s_magic_shows_yaml_with_a_copy_button() -> None:
    pytest.importorskip("IPython")
    from IPython.core.interactiveshell import InteractiveShell

    record_push("digits")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "nbdeploy")
    view = shell.run_line_magic("k8s", "digits --kserve -n models")
    html = view._repr_html_()
    assert "Copy YAML" in html and "navigator.clipboard.writeText" in html
    assert "InferenceService" in html
    assert "kubectl -n models apply -f digits-kserve.yaml" in html
    assert "kubectl -n models create secret generic nbdeploy-digits-token" in repr(view)
