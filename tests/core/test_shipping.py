"""Shipping to a cluster: push to a real registry on 127.0.0.1, delete the local image, pull it
back by digest, then run the pulled image exactly as the generated pod spec says and check it
answers like the local endpoint."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import nbdeploy as nbd
from nbdeploy import shipping
from nbdeploy._errors import DeployError, InputError
from nbdeploy.store import Store
from nbdeploy.vocabulary import ServerSettings
from tests.helpers.onnx_models import make_artifact
from tests.helpers.runtimes import needs_docker, poll

REGISTRY_BINARY = shutil.which("docker-registry") or shutil.which("registry")
needs_registry = pytest.mark.skipif(
    REGISTRY_BINARY is None,
    reason="no registry binary: apt-get install docker-registry (scripts/system-packages.sh)",
)
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 10


def test_reference_is_registry_name_version_sha() -> None:
    sha = "0123456789abcdef" * 4
    assert (
        shipping.image_reference("127.0.0.1:5000/team", "My_Digits", 3, sha)
        == "127.0.0.1:5000/team/nbdeploy-my_digits:3-0123456789ab"
    )
    assert shipping.image_reference("reg.example/", "d", 1, sha).startswith(
        "reg.example/nbdeploy-d:"
    )
    for bad in ("http://127.0.0.1:5000", "127.0.0.1:5000/Team", "", "a b"):
        with pytest.raises(InputError, match="registry"):
            shipping.check_registry(bad)


def test_pod_args_are_the_local_settings_without_local_only_flags() -> None:
    settings = ServerSettings(max_batch_size=8, threads=2, max_concurrency=16, log_requests=0.1)
    args = shipping.pod_server_args(settings)
    assert args[:4] == ["--max-batch-size", "8", "--max-queue-delay-ms", "2.0"]
    assert "--threads" in args and "--max-concurrency" in args
    assert "--log-requests" not in args and "0.1" not in args


def test_push_needs_a_registered_model() -> None:
    with pytest.raises(DeployError, match="no registered model"):
        nbd.push("absent", registry="127.0.0.1:5000/team")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on 127.0.0.1:PORT with its storage under tmp_path."""
    assert REGISTRY_BINARY is not None
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "version": 0.1,
                "log": {"level": "warn"},
                "storage": {
                    "filesystem": {"rootdirectory": str(tmp_path / "storage")},
                    "delete": {"enabled": True},
                },
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen(
        [REGISTRY_BINARY, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        if not poll(answers, timeout=20, interval=0.1):
            raise AssertionError((tmp_path / "registry.log").read_text())
        yield f"127.0.0.1:{port}/team"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def docker_client(registry: str) -> Iterator[Any]:
    """The engine; the images pushed to this test's registry are removed afterwards."""
    import docker

    client = docker.from_env(timeout=300)
    yield client
    for found in client.images.list():
        names = [*(found.tags or []), *(found.attrs.get("RepoDigests") or [])]
        if any(name.startswith(registry + "/") for name in names):
            client.images.remove(found.id, force=True)
    client.close()


def _local_endpoint(name: str) -> Any:
    return nbd.deploy(make_artifact(name), name=name, runtime="process", max_batch_size=8)


@needs_docker
@needs_registry
@pytest.mark.docker
@pytest.mark.slow
def test_push_delete_and_pull_back_by_digest(
    registry: str, docker_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import docker

    from nbdeploy.cli import main

    endpoint = _local_endpoint("shipme")
    try:
        result = nbd.push("shipme", registry=registry)
    finally:
        endpoint.stop()
    sha = Store().version("shipme", 1)["sha256"]
    assert result.reference == f"{registry}/nbdeploy-shipme:1-{sha[:12]}"
    assert result.digest.startswith("sha256:") and result.version == 1
    assert result.settings["max_batch_size"] == 8
    rows = Store().pushes("shipme")
    assert [(r["reference"], r["digest"]) for r in rows] == [(result.reference, result.digest)]
    assert shipping.latest_push("shipme") == result
    assert "push" in [event["kind"] for event in Store().events("shipme")]

    # Pushing again (from the command line) reuses the image: same digest, a second record.
    assert main(["push", "shipme", "--registry", registry, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["digest"] == result.digest and again["pinned"] == result.pinned
    assert len(Store().pushes("shipme")) == 2

    pushed = docker_client.images.get(result.reference)
    config = pushed.attrs["Config"]
    assert config["User"] == "10001"
    assert config["Cmd"] == shipping.pod_server_args(ServerSettings(max_batch_size=8))
    assert not any(
        e.startswith("NBDEPLOY_TOKEN=") and e != "NBDEPLOY_TOKEN=" for e in config["Env"]
    )
    assert pushed.labels["nbdeploy.sha256"] == sha

    # Gone from this machine, then back from the registry by digest: the same image.
    image_id = pushed.id
    docker_client.images.remove(result.reference, force=True)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(result.reference)
    pulled = docker_client.images.pull(result.pinned)
    assert pulled.id == image_id


# --- the pod spec, run as written -----------------------------------------------------------


def _bytes(quantity: str) -> int:
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def docker_options(pod: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``containers.run`` options for the pod's first container, field by field as the
    kubelet would apply them; every field of the spec is used or rejected."""
    container = pod["containers"][0]
    handled = {
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "env",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "resources",
        "securityContext",
        "volumeMounts",
    }
    assert set(container) <= handled, set(container) - handled
    security = {**pod.get("securityContext", {}), **container["securityContext"]}
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmpfs = {}
    for mount in container["volumeMounts"]:
        empty = volumes[mount["name"]]["emptyDir"]
        assert empty.get("medium") == "Memory"
        tmpfs[mount["mountPath"]] = f"rw,nosuid,nodev,size={_bytes(empty['sizeLimit'])}"
    options: dict[str, Any] = {
        "image": container["image"],
        "command": container.get("args"),
        "environment": env,
        "user": f"{security['runAsUser']}:{security['runAsGroup']}",
        "read_only": security["readOnlyRootFilesystem"],
        "cap_drop": security["capabilities"]["drop"],
        "security_opt": [] if security["allowPrivilegeEscalation"] else ["no-new-privileges"],
        "tmpfs": tmpfs,
        "mem_limit": _bytes(container["resources"]["limits"]["memory"]),
        # The pod's own network namespace: the probes and the request below reach the
        # container's port from inside it, as the kubelet and a Service reach the pod's IP;
        # nothing is published on this machine.
        "network_mode": "none",
        "detach": True,
    }
    assert security["seccompProfile"]["type"] == "RuntimeDefault"  # Docker's default profile
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    if "command" in container:
        options["entrypoint"] = container["command"]
    return options


HTTP_GET = """
import json, sys, urllib.request
method, url, token, body = sys.argv[1:5]
request = urllib.request.Request(url, data=body.encode() or None, method=method)
request.add_header("Content-Type", "application/json")
if token:
    request.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(request, timeout=5) as response:
        print(json.dumps({"status": response.status, "body": response.read().decode()}))
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": error.read().decode()}))
except OSError as error:
    print(json.dumps({"status": 0, "body": str(error)}))
"""


def _http(container: Any, method: str, path: str, port: int, token: str = "", body: Any = None):
    code, output = container.exec_run(
        [
            "python",
            "-c",
            HTTP_GET,
            method,
            f"http://127.0.0.1:{port}{path}",
            token,
            json.dumps(body) if body is not None else "",
        ]
    )
    assert code == 0, output
    return json.loads(output.decode().strip().splitlines()[-1])


@needs_docker
@needs_registry
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["deployment", "kserve"])
def test_pod_spec_runs_as_written_and_answers_like_the_local_endpoint(
    kind: str, registry: str, docker_client: Any
) -> None:
    endpoint = _local_endpoint("podrun")
    try:
        local = endpoint.predict(X)
        result = nbd.push("podrun", registry=registry)
    finally:
        endpoint.stop()
    manifests = nbd.kubernetes("podrun", kind=kind)
    if kind == "kserve":
        pod = manifests.objects[0]["spec"]["predictor"]
    else:
        pod = manifests.objects[0]["spec"]["template"]["spec"]
    container_spec = pod["containers"][0]
    assert container_spec["image"] == result.pinned
    docker_client.images.remove(result.reference, force=True)
    docker_client.images.pull(result.pinned)

    token = "cluster-secret-token"
    options = docker_options(pod, {manifests.secret: {"token": token}})
    container = docker_client.containers.run(**options)
    try:
        attrs = docker_client.api.inspect_container(container.id)
        host = attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["Memory"] == _bytes(container_spec["resources"]["limits"]["memory"])
        assert attrs["Config"]["User"] == "10001:10001"
        port = container_spec["ports"][0]["containerPort"]
        ready_path = container_spec["readinessProbe"]["httpGet"]["path"]
        live_path = container_spec["livenessProbe"]["httpGet"]["path"]

        def ready() -> bool:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()
            return _http(container, "GET", ready_path, port)["status"] == 200

        assert poll(ready, timeout=60, interval=0.5), container.logs().decode()
        assert _http(container, "GET", live_path, port)["status"] == 200
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(X.shape),
                    "datatype": "FP32",
                    "data": X.ravel().tolist(),
                }
            ]
        }
        infer = "/v2/models/podrun/infer"
        assert _http(container, "POST", infer, port, "", body)["status"] == 401
        answer = _http(container, "POST", infer, port, token, body)
        assert answer["status"] == 200, answer
        output = json.loads(answer["body"])["outputs"][0]
        remote = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        np.testing.assert_allclose(remote, local, rtol=1e-6, atol=1e-6)
        metrics = _http(container, "GET", "/metrics", port)
        assert metrics["status"] == 200 and "nbdeploy" in metrics["body"]
    finally:
        container.remove(force=True)
