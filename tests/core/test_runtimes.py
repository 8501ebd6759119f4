"""Runtimes end to end: the real server as a subprocess and in a hardened Docker container."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from nbdeploy._errors import DeployError, InputError
from nbdeploy.runtimes import (
    RuntimeHandle,
    docker_available,
    free_port,
    get_runtime,
    port_in_use,
)
from nbdeploy.runtimes.base import Runtime
from nbdeploy.runtimes.process import ProcessRuntime, run_root
from nbdeploy.vocabulary import ServerSettings
from tests.helpers.runtimes import (
    infer,
    model_version,
    needs_docker,
    output_array,
    poll,
    shared_cache_dir,
    single_version_spec,
)

TOKEN = "s3cret-token"
X = np.arange(12, dtype=np.float32).reshape(3, 4) / 10


def expected(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from tests.helpers.onnx_models import linear_model

    proto, _, _ = linear_model()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input": X})
    np.testing.assert_allclose(reference, X @ weight + bias, rtol=1e-5, atol=1e-5)
    return reference


# --- the interface and its helpers -----------------------------------------------------------


def test_handle_round_trips_through_json() -> None:
    handle = RuntimeHandle("docker", "abc123", "digits", 3, 8123, "http://127.0.0.1:8123")
    restored = RuntimeHandle.from_dict(json.loads(json.dumps(handle.to_dict())))
    assert restored == handle


def test_spec_turns_tuning_into_server_flags() -> None:
    settings = ServerSettings(max_batch_size=8, batching=False, cpus=2.5)
    assert settings.server_args() == [
        "--max-batch-size",
        "8",
        "--max-queue-delay-ms",
        "2.0",
        "--no-batching",
        "--threads",
        "2",
    ]
    assert "--threads" not in ServerSettings().server_args()


def test_port_helpers_see_a_listener() -> None:
    port = free_port()
    assert not port_in_use(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert port_in_use(port)


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(InputError, match="runtime must be one of auto, docker, process"):
        get_runtime("kubernetes")


def test_docker_without_an_engine_says_how_to_start_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert docker_available() is False
    with pytest.raises(DeployError, match=r"dockerd.*scripts/docker-engine.sh"):
        get_runtime("docker")
    assert get_runtime("auto").name == "process"


# --- the same checks for both runtimes -------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, str, np.ndarray]:
    directory, sha, weight, bias = model_version(tmp_path / "repo", name="tiny", version=1)
    return directory, sha, expected(weight, bias)


def launch(runtime: Runtime, model: tuple[Path, str, np.ndarray], **options) -> RuntimeHandle:
    directory, sha, _ = model
    spec = single_version_spec(
        directory, sha, port=free_port(), token=TOKEN, settings=ServerSettings(**options)
    )
    return runtime.start(spec)


def stored(handle: RuntimeHandle) -> RuntimeHandle:
    """The handle as the store gives it back to a new process (plain JSON)."""
    return RuntimeHandle.from_dict(json.loads(json.dumps(handle.to_dict())))


def containers_named(runtime: Any, name: str) -> list[Any]:
    """Containers nbdeploy made for deployment ``name``, running or not."""
    labels = ["nbdeploy.managed=true", f"nbdeploy.name={name}"]
    return runtime.client.containers.list(all=True, filters={"label": labels})


@pytest.fixture
def started() -> Iterator[list[tuple[Runtime, RuntimeHandle]]]:
    """Handles to stop after the test, whatever happened."""
    handles: list[tuple[Runtime, RuntimeHandle]] = []
    yield handles
    for runtime, handle in handles:
        runtime.stop(handle, timeout=5)


def check_serving(runtime: Runtime, handle: RuntimeHandle, reference: np.ndarray) -> None:
    runtime.wait_ready(handle, timeout=120)
    assert runtime.status(handle) == "running"
    assert runtime.address(handle) == f"http://127.0.0.1:{handle.port}" == handle.url
    response = infer(handle.url, "tiny", X, TOKEN)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(output_array(response), reference, rtol=1e-5, atol=1e-5)
    anonymous = infer(handle.url, "tiny", X, None)
    assert anonymous.status_code == 401
    assert "error" in anonymous.json()
    assert runtime.logs(handle).strip()


def test_process_runtime_serves_restarts_nothing_and_stops(tiny, started) -> None:
    runtime = ProcessRuntime()
    handle = launch(runtime, tiny)
    started.append((runtime, handle))
    assert handle.runtime == "process"
    check_serving(runtime, handle, tiny[2])
    assert ProcessRuntime().status(stored(handle)) == "running"  # what a restarted kernel sees

    os.kill(int(handle.ref), signal.SIGKILL)
    assert poll(lambda: runtime.status(handle) == "exited", timeout=10)
    with pytest.raises(DeployError, match="exited before it was ready"):
        runtime.wait_ready(handle, timeout=5)

    runtime.stop(handle, timeout=5)
    assert runtime.status(handle) == "missing"
    assert not list(run_root().glob("tiny-*/handle.json"))
    assert "listening on" in runtime.logs(handle)  # the dead server's log stays until prune


def test_process_stop_never_signals_a_recycled_pid(tiny, started) -> None:
    """A handle whose pid now belongs to another process (or whose start time is unknown)
    is not signalled: stop() leaves that process alone."""
    import subprocess
    import sys

    runtime = ProcessRuntime()
    handle = launch(runtime, tiny)
    started.append((runtime, handle))
    runtime.wait_ready(handle, timeout=120)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for impostor in (
            RuntimeHandle(**{**handle.to_dict(), "ref": str(bystander.pid)}),
            RuntimeHandle(**{**handle.to_dict(), "ref": str(bystander.pid), "started": None}),
        ):
            (Path(impostor.log_path).parent / "handle.json").unlink(missing_ok=True)
            runtime.stop(impostor, timeout=2)
            assert bystander.poll() is None, "stop() signalled a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


def test_process_stop_is_graceful_and_frees_the_port(tiny, started) -> None:
    runtime = ProcessRuntime()
    handle = launch(runtime, tiny, batching=False)
    started.append((runtime, handle))
    runtime.wait_ready(handle, timeout=120)
    runtime.stop(handle, timeout=10)
    assert runtime.status(handle) == "missing"
    assert not port_in_use(handle.port)


def test_process_server_that_cannot_load_reports_its_log(tiny, started) -> None:
    directory, sha, _ = tiny
    (directory / "model.onnx").write_bytes(b"this is not an onnx model")
    runtime = ProcessRuntime()
    handle = launch(runtime, tiny)
    started.append((runtime, handle))
    with pytest.raises(DeployError, match="last log lines"):
        runtime.wait_ready(handle, timeout=60)


def test_a_port_in_use_is_refused_before_launch(tiny) -> None:
    directory, sha, _ = tiny
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        spec = single_version_spec(directory, sha, port=port, token=TOKEN)
        with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is already in use"):
            ProcessRuntime().start(spec)
        assert not list(run_root().glob("tiny-*"))


# --- docker ----------------------------------------------------------------------------------


@pytest.fixture
def docker_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Host networking (the test machines have no bridge) and the session's wheel cache."""
    monkeypatch.setenv("NBDEPLOY_CACHE", str(shared_cache_dir(tmp_path_factory)))
    monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    return get_runtime("docker")


@needs_docker
@pytest.mark.docker
def test_docker_runtime_hardened_container(docker_env, tiny, started) -> None:
    runtime = docker_env
    handle = launch(runtime, tiny, memory="512m", cpus=1.0)
    started.append((runtime, handle))
    assert handle.runtime == "docker"
    check_serving(runtime, handle, tiny[2])

    container = runtime.container(handle)
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert config["User"] == "10001"
    assert container.exec_run(["id", "-u"]).output.decode().strip() == "10001"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["Memory"] == 512 * 1024**2
    assert host["NanoCpus"] == 1_000_000_000
    assert host["PidsLimit"] > 0
    assert host["NetworkMode"] == "host"
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    assert container.labels["nbdeploy.name"] == "tiny"
    mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in container.attrs["Mounts"]}
    assert mounts["/models/tiny"] == (str(tiny[0].parent), False)
    assert mounts["/serving"][1] is False
    assert container.labels["nbdeploy.port"] == str(handle.port)
    assert container.exec_run(["touch", "/app/x"]).exit_code != 0  # read-only root
    assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0  # tmpfs is writable

    def healthy() -> bool:
        container.reload()
        return container.attrs["State"].get("Health", {}).get("Status") == "healthy"

    assert poll(healthy, timeout=60, interval=0.5), "the image's HEALTHCHECK never passed"
    assert get_runtime("docker").status(stored(handle)) == "running"


@needs_docker
@pytest.mark.docker
def test_docker_container_killed_from_outside_is_restarted(docker_env, tiny, started) -> None:
    runtime = docker_env
    handle = launch(runtime, tiny)
    started.append((runtime, handle))
    runtime.wait_ready(handle, timeout=120)
    container = runtime.container(handle)
    host_pid = container.attrs["State"]["Pid"]

    os.kill(host_pid, signal.SIGKILL)  # the server dies under the engine's feet
    seen: list[str] = []

    def not_running() -> bool:
        seen.append(runtime.status(handle))
        return seen[-1] != "running"

    assert poll(not_running, timeout=10)
    assert seen[-1] in ("exited", "restarting", "starting")
    assert poll(lambda: runtime.status(handle) == "running", timeout=60, interval=0.1)
    container.reload()
    assert container.attrs["RestartCount"] >= 1
    assert container.attrs["State"]["Pid"] != host_pid
    response = infer(handle.url, "tiny", X, TOKEN)
    np.testing.assert_allclose(output_array(response), tiny[2], rtol=1e-5, atol=1e-5)

    container.kill()  # a kill through the engine counts as a manual stop: no restart
    assert poll(lambda: runtime.status(handle) == "exited", timeout=10)

    runtime.stop(handle, timeout=5)
    assert runtime.status(handle) == "missing"
    assert not containers_named(runtime, "tiny")
    with pytest.raises(httpx.ConnectError):
        httpx.get(handle.url + "/v2/health/live", timeout=2)


@needs_docker
@pytest.mark.docker
def test_docker_port_in_use_is_refused_before_anything_runs(docker_env, tiny) -> None:
    directory, sha, _ = tiny
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is already in use"):
            docker_env.start(single_version_spec(directory, sha, port=port, token=TOKEN))
    assert not containers_named(docker_env, "tiny")
