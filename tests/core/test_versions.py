"""Versions side by side behind one stable URL: a raw HTTP client on ``ep.url`` through every
change, traffic splits, shadow and compare, guards, failures and concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

import nbdeploy as nbd
from nbdeploy._errors import DeployError, InputError
from nbdeploy.routing import AdminClient, read_routing
from nbdeploy.runtimes import docker_available
from nbdeploy.store import Store
from tests.helpers.onnx_models import save_linear
from tests.helpers.waiting import wait_for

X = np.random.default_rng(7).standard_normal((4, 4)).astype(np.float32)
BODY = {
    "inputs": [
        {"name": "input", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}
    ]
}


def expected(path: Path) -> np.ndarray:
    return ort.InferenceSession(str(path)).run(None, {"input": X})[0]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    return {
        "a": save_linear(tmp_path / "a.onnx", seed=0),
        "b": save_linear(tmp_path / "b.onnx", seed=1),
        "c": save_linear(tmp_path / "c.onnx", seed=2),
    }


class RawClient:
    """A plain HTTP client looping on a URL, as a colleague's script would: no nbd.get()."""

    def __init__(self, url: str, name: str, token: str | None) -> None:
        self.url = f"{url}/v2/models/{name}/infer"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.versions: list[str] = []
        self.outputs: list[np.ndarray] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RawClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            while not self._stop.is_set():
                try:
                    response = client.post(self.url, json=BODY, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                body = response.json()
                self.versions.append(body["model_version"])
                output = body["outputs"][0]
                self.outputs.append(
                    np.array(output["data"], dtype=np.float32).reshape(output["shape"])
                )

    def seen_since(self, start: int, version: str) -> bool:
        return version in self.versions[start:]

    def wait_answering(self, version: str, timeout: float = 30.0) -> None:
        start = len(self.versions)
        assert wait_for(
            lambda: self.seen_since(start, version) and len(self.versions) > start + 5, timeout
        ), f"never saw version {version}; last {self.versions[-5:]}, failures {self.failures[-3:]}"


def deploy_disagreeing_canary(models: dict[str, Path], name: str, runtime: str) -> nbd.Endpoint:
    """``a`` as the stable version and ``b``, which disagrees with it, as a 50% canary whose
    guard (min_agreement=0.99 after 10 requests) trips once traffic flows."""
    ep = nbd.deploy(models["a"], name=name, runtime=runtime)
    nbd.deploy(
        models["b"],
        name=name,
        runtime=runtime,
        canary=50,
        guards={"min_agreement": 0.99, "min_requests": 10},
    )
    return ep


def _docker_or_skip(runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if runtime == "docker":
        if not docker_available():
            pytest.skip("no Docker engine answers: run scripts/docker-engine.sh to start one")
        monkeypatch.setenv("NBDEPLOY_DOCKER_NETWORK", "host")


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_one_url_through_redeploy_rollback_canary_shadow(
    models: dict[str, Path], cleanup, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raw client on ep.url sees no failed request through every change, and the answers
    of the version each change says."""
    _docker_or_skip(runtime, monkeypatch)
    first = nbd.deploy(models["a"], name="one-url", runtime=runtime)
    url, token = first.url, first.token
    endpoints = [first]
    with RawClient(url, "one-url", token) as client:
        client.wait_answering("1")
        endpoints.append(nbd.deploy(models["b"], name="one-url", runtime=runtime))
        client.wait_answering("2")
        endpoints.append(nbd.rollback("one-url"))
        assert nbd.traffic("one-url") == {1: 100}
        client.wait_answering("1")
        endpoints.append(nbd.deploy(models["c"], name="one-url", runtime=runtime, canary=10))
        assert endpoints[-1].traffic == {1: 90, 3: 10}
        client.wait_answering("3")
        endpoints.append(nbd.promote("one-url"))
        assert nbd.traffic("one-url") == {3: 100}
        start = len(client.versions)
        client.wait_answering("3")
        assert set(client.versions[start + 2 :]) == {"3"}
        endpoints.append(nbd.deploy(models["a"], name="one-url", runtime=runtime, shadow=True))
        shadow_start = len(client.versions)
        client.wait_answering("3")
        assert [v.role for v in nbd.get("one-url").versions] == ["stable", "shadow"]
        endpoints.append(nbd.stop_version("one-url", 4))
        client.wait_answering("3")
        assert set(client.versions[shadow_start:]) == {"3"}
    assert client.failures == []
    assert {ep.url for ep in endpoints} == {url}
    assert {ep.token for ep in endpoints} == {token}
    assert nbd.traffic("one-url") == {3: 100}
    np.testing.assert_allclose(client.outputs[-1], expected(models["c"]), atol=1e-5)
    kinds = [e["kind"] for e in reversed(Store().events("one-url"))]
    assert kinds.count("deployed") == 4 and "promoted" in kinds and "rolled-back" in kinds


@pytest.mark.slow
@pytest.mark.docker
def test_docker_restart_brings_back_versions_and_weights(
    models: dict[str, Path], cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The container killed from outside comes back by its restart policy with the same
    versions and weights, and the raw client recovers on the same URL."""
    _docker_or_skip("docker", monkeypatch)
    from nbdeploy.runtimes.docker import DockerRuntime

    ep = nbd.deploy(models["a"], name="restarts", runtime="docker")
    nbd.deploy(models["b"], name="restarts", runtime="docker", canary=30)
    container = DockerRuntime().container(ep.handle)
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
    mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
    assert mounts == {"/models/restarts": False, "/serving": False, "/state": True}
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)
    assert wait_for(lambda: nbd.get("restarts").status != "running", 20)
    assert wait_for(lambda: nbd.get("restarts").status == "running", 90)
    assert nbd.traffic("restarts") == {1: 70, 2: 30}
    with RawClient(ep.url, "restarts", ep.token) as client:
        client.wait_answering("2")
        client.wait_answering("1")
    assert client.failures == []


def test_a_guard_trip_outlives_a_crash_of_the_container(
    models: dict[str, Path], cleanup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guard trips, and the container dies before anything on the host looked: restarted
    by its policy, the server still sends every request to the stable version (the trip was
    kept in the name's state directory), and the host records the trip when it next looks."""
    _docker_or_skip("docker", monkeypatch)
    from nbdeploy.runtimes.docker import DockerRuntime

    ep = deploy_disagreeing_canary(models, "tripped", "docker")
    admin = AdminClient(ep.url, Store().route("tripped")["admin_token"], name="tripped")
    with RawClient(ep.url, "tripped", ep.token) as client:
        assert wait_for(lambda: admin.routing()["tripped"] is not None, 10)
    trip = admin.routing()["tripped"]
    assert read_routing("tripped").weights == {1: 50, 2: 50}  # the host has not looked yet

    container = DockerRuntime().container(ep.handle)
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)

    def restarted() -> dict | None:
        try:
            return admin.routing()
        except DeployError:
            return None

    assert wait_for(lambda: container.reload() or container.attrs["RestartCount"] > 0, 30)
    assert wait_for(restarted, 90)
    live = admin.routing()
    assert live["tripped"] == trip and live["weights"] == {"1": 100, "2": 0}
    with RawClient(ep.url, "tripped", ep.token) as client:
        client.wait_answering("1")
    assert client.failures == [] and set(client.versions) == {"1"}
    assert nbd.traffic("tripped") == {1: 100}
    assert read_routing("tripped").weights == {1: 100}
    assert any(e["kind"] == "guard" for e in Store().events("tripped"))


def test_split_follows_the_weights(models: dict[str, Path], cleanup) -> None:
    """2,000 unversioned requests split within 3 points of the weights, each response naming
    the version that answered; a versioned route still reaches a version directly."""
    ep = nbd.deploy(models["a"], name="split", runtime="process")
    nbd.deploy(models["b"], name="split", runtime="process", canary=10)
    counts: Counter[str] = Counter()
    with httpx.Client(timeout=30, trust_env=False, headers=ep.headers) as client:
        for _ in range(2000):
            counts[
                client.post(f"{ep.url}/v2/models/split/infer", json=BODY).json()["model_version"]
            ] += 1
        direct = client.post(f"{ep.url}/v2/models/split/versions/2/infer", json=BODY).json()
    assert abs(counts["2"] / 2000 - 0.10) <= 0.03, counts
    assert counts["1"] + counts["2"] == 2000
    assert direct["model_version"] == "2"
    nbd.set_traffic("split", {"1": "50", "2": "50"})
    assert nbd.get("split").traffic == {1: 50, 2: 50}
    with pytest.raises(InputError, match="add up to 100"):
        nbd.set_traffic("split", {1: 50, 2: 40})
    with pytest.raises(InputError, match="no registered version 9"):
        nbd.set_traffic("split", {1: 50, 9: 50})
    assert nbd.traffic("split") == {1: 50, 2: 50}


def test_shadow_mirrors_without_changing_answers(models: dict[str, Path], cleanup) -> None:
    """Clients get v1's answers while compare reports v2's agreement from mirrored requests:
    low for a different model, 1.0 for an identical one."""
    ep = nbd.deploy(models["a"], name="shadowed", runtime="process")
    nbd.deploy(models["b"], name="shadowed", runtime="process", shadow=True)
    want = expected(models["a"])
    for _ in range(60):
        np.testing.assert_allclose(ep.predict(X), want, atol=1e-5)
    assert wait_for(lambda: nbd.compare("shadowed").get(2).compared >= 200, 10)
    report = nbd.compare("shadowed")
    assert report.source == "live" and report.reference == 1
    assert report.get(2).agreement < 0.9
    assert report.get(1).requests >= 60 and report.get(2).mirrored >= 50
    assert "v2" in report.summary()
    as_json = report.to_dict()
    assert as_json["versions"][1]["version"] == 2

    nbd.deploy(models["a"], name="shadowed", runtime="process", shadow=True)
    for _ in range(60):
        ep.predict(X)
    assert wait_for(lambda: nbd.compare("shadowed").get(3).compared >= 200, 10)
    assert nbd.compare("shadowed").get(3).agreement == 1.0
    assert nbd.traffic("shadowed") == {1: 100}


def test_offline_compare_on_held_out_data(tmp_path: Path, cleanup) -> None:
    """compare(name, X, y) runs every held version on the data: accuracy, agreement, latency."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    good = LogisticRegression(max_iter=300).fit(features[:600], labels[:600])
    worse = LogisticRegression(max_iter=300, C=1e-4).fit(features[:100], labels[:100])
    nbd.deploy(good, sample=features[:8], name="ab", runtime="process")
    nbd.deploy(worse, sample=features[:8], name="ab", runtime="process", canary=20)
    report = nbd.compare("ab", features[1000:1300], labels[1000:1300])
    assert report.source == "offline"
    assert report.get(1).metric == "accuracy" and report.get(1).score > 0.9
    assert report.get(2).score < report.get(1).score
    assert 0 < report.get(2).agreement < 1
    assert report.get(1).p50_ms is not None
    with pytest.raises(InputError):
        nbd.compare("ab", features[:10], labels[:5])


def test_guard_rolls_a_disagreeing_canary_back(models: dict[str, Path], cleanup) -> None:
    """A canary with min_agreement=0.99 that disagrees goes back to the stable by itself
    within 10 s; an event is recorded and the view says why."""
    ep = deploy_disagreeing_canary(models, "guarded", "process")
    started = time.monotonic()
    with RawClient(ep.url, "guarded", ep.token) as client:
        assert wait_for(lambda: nbd.traffic("guarded") == {1: 100}, 10)
    assert time.monotonic() - started < 10
    assert client.failures == []
    view = nbd.get("guarded").view()
    assert view.guard is not None and "agreement" in view.guard and "v2" in view.guard
    assert [v.version for v in view.versions] == [1]
    assert any(e["kind"] == "guard" for e in Store().events("guarded"))
    assert read_routing("guarded").weights == {1: 100}


def test_guards_and_rollout_arguments_are_checked(models: dict[str, Path], cleanup) -> None:
    with pytest.raises(InputError, match="deploy it once"):
        nbd.deploy(models["a"], name="fresh", runtime="process", canary=10)
    nbd.deploy(models["a"], name="fresh", runtime="process")
    for bad, message in (
        ({"canary": 0}, "1 to 99"),
        ({"canary": 100}, "1 to 99"),
        ({"canary": 10, "shadow": True}, "not both"),
        ({"guards": {"min_agreement": 0.9}}, "canary=P"),
        ({"canary": 10, "guards": {"min_agreemnt": 0.9}}, "unknown guard"),
        ({"canary": 10, "guards": {"max_error_rate": 2}}, "between 0 and 1"),
    ):
        with pytest.raises(InputError, match=message):
            nbd.deploy(models["b"], name="fresh", runtime="process", **bad)
    assert nbd.models("fresh")[0]["version"] == 1
    with pytest.raises(DeployError, match="no canary or shadow"):
        nbd.promote("fresh")
    with pytest.raises(InputError, match="stable version"):
        nbd.stop_version("fresh", 1)
    with pytest.raises(DeployError, match="no active deployment"):
        nbd.promote("nothing-here")


def test_a_version_that_fails_to_load_leaves_serving_untouched(
    models: dict[str, Path], cleanup
) -> None:
    ep = nbd.deploy(models["a"], name="broken", runtime="process")
    registered = nbd.register(str(models["b"]), name="broken")
    model_file = registered.path
    model_file.chmod(0o644)
    model_file.write_bytes(b"not an onnx graph")
    with pytest.raises(DeployError, match="untouched"):
        nbd.set_traffic("broken", {1: 50, 2: 50})
    assert nbd.traffic("broken") == {1: 100}
    assert read_routing("broken").weights == {1: 100}
    np.testing.assert_allclose(ep.predict(X), expected(models["a"]), atol=1e-5)
    assert [row.version for row in Store().deployments(name="broken")] == [1]
    assert any(e["kind"] == "failed" for e in Store().events("broken"))


def test_pinned_port_and_a_dead_server_keep_the_url(models: dict[str, Path], cleanup) -> None:
    from nbdeploy.runtimes.base import free_port

    port = free_port()
    first = nbd.deploy(models["a"], name="pinned", runtime="process", port=port)
    second = nbd.deploy(models["b"], name="pinned", runtime="process", port=port, canary=20)
    assert first.url == second.url == f"http://127.0.0.1:{port}"
    os.kill(int(first.handle.ref), signal.SIGKILL)
    assert wait_for(lambda: nbd.get("pinned").status != "running", 10)
    third = nbd.set_traffic("pinned", {1: 50, 2: 50})
    assert third.url == first.url and third.status == "running"
    assert nbd.traffic("pinned") == {1: 50, 2: 50}


def test_concurrent_writers_end_in_one_consistent_state(
    models: dict[str, Path], nbdeploy_home: Path, cleanup
) -> None:
    """Two processes changing one name at once: one of their splits wins, the store, the
    routing file and the server agree, and no registered version is lost."""
    nbd.deploy(models["a"], name="racing", runtime="process")
    nbd.register(str(models["b"]), name="racing")
    nbd.register(str(models["c"]), name="racing")
    script = (
        "import sys, nbdeploy as nbd\nnbd.set_traffic('racing', {1: 50, int(sys.argv[1]): 50})\n"
    )
    env = {**os.environ, "NBDEPLOY_HOME": str(nbdeploy_home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(v)], env=env, stderr=subprocess.PIPE, text=True
        )
        for v in (2, 3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    stored = read_routing("racing")
    assert stored.weights in ({1: 50, 2: 50}, {1: 50, 3: 50})
    route = Store().route("racing")
    live = AdminClient(nbd.get("racing").url, route["admin_token"]).routing()
    assert {int(v): w for v, w in live["weights"].items()} == stored.weights
    assert route["routing"]["weights"] == {str(v): w for v, w in stored.weights.items()}
    assert sorted({row.version for row in Store().deployments(name="racing")}) == stored.versions
    assert [row["version"] for row in nbd.models("racing")] == [3, 2, 1]


def test_remove_and_prune(models: dict[str, Path], cleanup) -> None:
    for key in ("a", "b", "c"):
        nbd.deploy(models[key], name="kept", runtime="process")
    with pytest.raises(DeployError, match="serves version"):
        nbd.remove("kept", 3)
    report = nbd.prune(keep=1, dry_run=True)
    assert {(r["name"], r["version"]) for r in report.removed if r["what"] == "version"} == {
        ("kept", 1),
        ("kept", 2),
    }
    assert [row["version"] for row in nbd.models("kept")] == [3, 2, 1]
    report = nbd.prune(keep=1)
    assert [row["version"] for row in nbd.models("kept")] == [3]
    assert report.freed_bytes > 0 and "removed" in report.table()
    with pytest.raises(DeployError, match="no earlier version"):
        nbd.rollback("kept")
    assert nbd.remove("kept", force=True) == [3]
    assert nbd.models("kept") == [] and nbd.deployments() == []
    with pytest.raises(DeployError, match="no registered model"):
        nbd.remove("kept")


@pytest.mark.slow
def test_undeploy_stops_the_demo_server_too(models: dict[str, Path]) -> None:
    from nbdeploy.demo import launch_demo, running_demos

    nbd.deploy(models["a"], sample=X, name="with-demo", runtime="process")
    server = launch_demo("with-demo")
    assert server.alive
    assert nbd.undeploy("with-demo") == [1]
    assert wait_for(lambda: not server.alive, 10)
    assert running_demos() == []
