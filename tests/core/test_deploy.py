"""deploy() end to end on the process runtime: real server subprocesses, real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

import nbdeploy as nbd
from nbdeploy._errors import DeployError, NbdeployError
from nbdeploy.bench_http import benchmark_endpoint
from nbdeploy.runtimes import docker_available
from nbdeploy.store import Store
from tests.helpers.onnx_models import save_linear

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)


def expected(path: Path, x: np.ndarray = X) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"input": x})[0]


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return save_linear(tmp_path / "linear.onnx", seed=0)


def test_deploy_onnx_file_serves_same_numbers(onnx_file: Path, cleanup) -> None:
    ep = nbd.deploy(onnx_file, name="linear", runtime="process")
    assert ep.url.startswith("http://127.0.0.1:")
    assert ep.status == "running"
    np.testing.assert_allclose(ep.predict(X), expected(onnx_file), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        ep.predict(X.tolist(), binary=False), expected(onnx_file), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(ep.predict({"input": X}), expected(onnx_file), rtol=1e-5, atol=1e-5)
    meta = ep.metadata()
    assert meta["name"] == "linear"
    assert meta["inputs"][0]["datatype"] == "FP32"
    assert ep.token and ep.headers == {"Authorization": f"Bearer {ep.token}"}
    unauthorised = httpx.post(f"{ep.url}/v2/models/linear/infer", json={"inputs": []})
    assert unauthorised.status_code == 401
    assert "linear" in ep.logs()
    assert [e.name for e in nbd.deployments()] == ["linear"]
    assert nbd.get("linear").url == ep.url


def test_undeploy_stops_the_server(onnx_file: Path) -> None:
    ep = nbd.deploy(onnx_file, name="gone", runtime="process")
    assert nbd.undeploy("gone") == [1]
    assert ep.status in ("exited", "missing")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{ep.url}/v2/health/live", timeout=2)
    with pytest.raises(DeployError, match="no active deployment named 'gone'"):
        nbd.get("gone")
    assert Store().deployments() == []


def test_no_auth_and_chosen_port(onnx_file: Path, cleanup) -> None:
    from nbdeploy.runtimes import free_port

    port = free_port()
    ep = nbd.deploy(onnx_file, name="open", runtime="process", auth=False, port=port)
    assert ep.url == f"http://127.0.0.1:{port}"
    assert ep.token is None and ep.headers == {}
    body = {
        "inputs": [
            {"name": "input", "shape": [5, 4], "datatype": "FP32", "data": X.ravel().tolist()}
        ]
    }
    response = httpx.post(f"{ep.url}/v2/models/open/infer", json=body)
    assert response.status_code == 200
    with pytest.raises(DeployError, match=f"port {port} on 127.0.0.1 is already in use"):
        nbd.deploy(onnx_file, name="other", runtime="process", port=port)
    assert [row["name"] for row in nbd.models()] == ["open"]


def test_bad_arguments_are_clear_errors(onnx_file: Path) -> None:
    with pytest.raises(NbdeployError, match="runtime must be one of auto, docker, process"):
        nbd.deploy(onnx_file, name="x", runtime="kubernetes")
    with pytest.raises(NbdeployError, match="quantize must be one of"):
        nbd.deploy(onnx_file, name="x", runtime="process", quantize="int3")
    with pytest.raises(NbdeployError, match="invalid model name"):
        nbd.deploy(onnx_file, name="Bad Name", runtime="process")
    assert Store().deployments(states=("starting", "active", "failed")) == []


def test_docker_runtime_without_engine_says_how_to_start_one(
    onnx_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(DeployError, match="dockerd"):
        nbd.deploy(onnx_file, name="x", runtime="docker")


def test_reattach_from_another_process(onnx_file: Path, nbdeploy_home: Path, cleanup) -> None:
    """A new interpreter (a restarted kernel) finds the running endpoint through the store."""
    ep = nbd.deploy(onnx_file, name="attach", runtime="process")
    script = (
        "import numpy as np, nbdeploy as nbd\n"
        "ep = nbd.get('attach')\n"
        "print(ep.status, ep.url)\n"
        "print(ep.predict(np.ones((1, 4), dtype=np.float32)).tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "NBDEPLOY_HOME": str(nbdeploy_home)},
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[0] == f"running {ep.url}"
    want = expected(onnx_file, np.ones((1, 4), dtype=np.float32))
    np.testing.assert_allclose(np.array(eval(out[1])), want, rtol=1e-5)


@pytest.mark.parametrize("runtime", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_blue_green_switch_under_load(
    tmp_path: Path, cleanup, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client looping through nbd.get() while a new version deploys sees no failed request."""
    if runtime == "docker":
        if not docker_available():
            pytest.skip("no Docker engine answers: run scripts/docker-engine.sh to start one")
        monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")
    v1_path = save_linear(tmp_path / "v1.onnx", seed=0)
    v2_path = save_linear(tmp_path / "v2.onnx", seed=1)
    first = nbd.deploy(v1_path, name="bg", runtime=runtime)
    stop = threading.Event()
    seen: list[np.ndarray] = []
    failures: list[BaseException] = []

    def client_loop() -> None:
        while not stop.is_set():
            try:
                seen.append(nbd.get("bg").predict(X))
            except BaseException as exc:
                failures.append(exc)

    thread = threading.Thread(target=client_loop)
    thread.start()
    try:
        for _ in range(500):
            if len(seen) >= 3 or failures:
                break
            threading.Event().wait(0.02)
        second = nbd.deploy(v2_path, name="bg", runtime=runtime)
        for _ in range(200):
            if len(seen) > 20 and np.allclose(seen[-1], expected(v2_path), atol=1e-5):
                break
            threading.Event().wait(0.02)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    assert second.version == 2
    assert second.url == first.url and first.status == "running"  # one server, one URL
    assert np.allclose(seen[0], expected(v1_path), atol=1e-5)
    assert np.allclose(seen[-1], expected(v2_path), atol=1e-5)
    assert [(e.name, e.version) for e in nbd.deployments()] == [("bg", 2)]


def test_rollback_serves_the_previous_version(tmp_path: Path, cleanup) -> None:
    v1_path = save_linear(tmp_path / "v1.onnx", seed=0)
    v2_path = save_linear(tmp_path / "v2.onnx", seed=1)
    nbd.deploy(v1_path, name="rb", runtime="process")
    current = nbd.deploy(v2_path, name="rb", runtime="process", max_batch_size=4, batching=False)
    np.testing.assert_allclose(current.predict(X), expected(v2_path), atol=1e-5)
    back = nbd.rollback("rb")
    assert back.version == 1
    assert back.token == current.token
    assert back.settings.max_batch_size == 4 and back.settings.batching is False
    assert "dynamic batching: off" in back.logs()
    np.testing.assert_allclose(nbd.get("rb").predict(X), expected(v1_path), atol=1e-5)
    with pytest.raises(DeployError, match="already serves version 1"):
        nbd.rollback("rb", 1)


def test_two_deploys_racing_for_one_name(onnx_file: Path, nbdeploy_home: Path, cleanup) -> None:
    script = (
        "import sys, nbdeploy as nbd\n"
        "ep = nbd.deploy(sys.argv[1], name='race', runtime='process')\n"
        "print(ep.version)\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(nbdeploy_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(onnx_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    versions = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        versions.append(int(out.strip()))
    assert sorted(versions) in ([1, 2], [2, 2])  # v1's deploy, if it ends last, serves v2
    assert [row["version"] for row in nbd.models("race")] == [2, 1]
    active = Store().deployments(name="race")
    assert [row.version for row in active] == [2]
    winner = nbd.get("race")
    assert winner.version == 2 and winner.status == "running"
    np.testing.assert_allclose(winner.predict(X), expected(onnx_file), atol=1e-5)
    assert Store().deployments(name="race", states=("starting",)) == []


def test_torch_model_with_int8(cleanup) -> None:
    from tests.helpers.models import digits, mlp, train

    x, y = digits()
    model = mlp()
    train(model, x, y, epochs=20)
    ep = nbd.deploy(
        model,
        x[:8],
        name="digits-mlp",
        quantize="int8",
        runtime="process",
        labels=[str(i) for i in range(10)],
    )
    meta = nbd.models()[0]
    assert meta["variant"].startswith("int8")
    logits = ep.predict(x[:64])
    assert logits.shape == (64, 10)
    import torch

    with torch.no_grad():
        reference = model(torch.from_numpy(x[:64])).numpy()
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    assert agreement >= 0.9


def test_http_benchmark_rows(onnx_file: Path, cleanup) -> None:
    ep = nbd.deploy(onnx_file, name="hb", runtime="process")
    report = benchmark_endpoint(ep, X[:1], concurrency=(1, 4), duration_s=0.5, warmup=2)
    rows = {(r.engine, r.concurrency): r for r in report.results}
    assert set(rows) == {("http-json", 1), ("http-json", 4), ("http-binary", 1), ("http-binary", 4)}
    for row in rows.values():
        assert row.status == "ok" and row.note is None
        assert row.runs > 0 and row.p50_ms <= row.p99_ms and row.throughput > 0
