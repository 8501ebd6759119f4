"""deploy() on the real Docker engine, through the public API only: the user's path."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import nbdeploy as nbd
from nbdeploy.runtimes import docker_available
from tests.helpers.onnx_models import save_linear
from tests.helpers.waiting import wait_for

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(
        not docker_available(),
        reason="no Docker engine answers: run scripts/docker-engine.sh (as root) to start one",
    ),
]
X = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)


@pytest.fixture
def docker_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    yield
    for endpoint in nbd.deployments():
        endpoint.stop()


def test_deploy_on_docker_serves_v2_clients_and_survives_a_kill(docker_env, tmp_path: Path) -> None:
    import tritonclient.http as triton

    path = save_linear(tmp_path / "linear.onnx", seed=3)
    want = ort.InferenceSession(str(path)).run(None, {"input": X})[0]
    lines: list[nbd.ProgressEvent] = []
    ep = nbd.deploy(path, name="dock", runtime="docker", progress=lines.append)
    assert ep.runtime == "docker" and ep.status == "running"
    assert any(event.stage == "ready" for event in lines)
    np.testing.assert_allclose(ep.predict(X), want, rtol=1e-5, atol=1e-6)

    client = triton.InferenceServerClient(ep.url.removeprefix("http://"))
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    result = client.infer(
        "dock",
        [tensor],
        outputs=[triton.InferRequestedOutput("output", binary_data=True)],
        headers=ep.headers,
    )
    np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-5, atol=1e-6)
    assert client.is_server_ready()

    from nbdeploy.runtimes.docker import DockerRuntime

    container = DockerRuntime().container(ep.handle)
    labels = container.labels
    assert labels["nbdeploy.name"] == "dock" and labels["nbdeploy.port"] == str(ep.handle.port)
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)
    assert wait_for(lambda: nbd.get("dock").status in ("exited", "restarting", "starting"), 20)
    assert wait_for(lambda: nbd.get("dock").status == "running", 90)
    np.testing.assert_allclose(nbd.get("dock").predict(X), want, rtol=1e-5, atol=1e-6)

    nbd.undeploy("dock")
    assert ep.status == "missing"
