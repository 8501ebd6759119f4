"""Versions side by side behind one name (``--routing``), over real HTTP with real models:
weighted split, mirroring and compare stats, guards, admin routes, reloads and restarts."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers.serve import (
    ServerProcess,
    decode_response,
    launch,
    save_failing,
    save_mlp,
    start_server,
    write_routing,
)

NAME = "mlp"
TOKEN = "inference-token"
ADMIN = "admin-token"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
DIFFERENT, COPY, FAILING, CORRUPT = 2, 3, 4, 5


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlp v1, a v2 with other weights, v3 a copy of v1, v4 failing on every input and v5
    whose model.onnx is not a model."""
    root = tmp_path_factory.mktemp("routing-repo")
    save_mlp(root / NAME / "1", seed=1)
    save_mlp(root / NAME / str(DIFFERENT), seed=2)
    shutil.copytree(root / NAME / "1", root / NAME / str(COPY))
    save_failing(root / NAME / str(FAILING))
    corrupt = root / NAME / str(CORRUPT)
    corrupt.mkdir()
    (corrupt / "model.onnx").write_bytes(b"this is not an onnx model")
    return root


@pytest.fixture
def serve(repository: Path, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers on ``tmp_path/routing.json``; every one is stopped at the end."""
    started: list[ServerProcess] = []

    def start(*args: str, admin_token: str | None = ADMIN, **kwargs: Any) -> ServerProcess:
        server = start_server(
            repository,
            "--routing",
            str(tmp_path / "routing.json"),
            *args,
            log_path=tmp_path / f"server-{len(started)}.log",
            token=TOKEN,
            admin_token=admin_token,
            **kwargs,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def routing_file(tmp_path: Path) -> Path:
    return tmp_path / "routing.json"


def rows(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 4)).astype(np.float32)


def reference(repository: Path, version: int, x: np.ndarray) -> np.ndarray:
    path = repository / NAME / str(version) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"x": x})[0]


def infer(client: httpx.Client, x: np.ndarray, version: int | None = None) -> httpx.Response:
    route = f"/v2/models/{NAME}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]
    }
    return client.post(route, json=body)


def admin(server: ServerProcess, method: str, path: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", ADMIN_HEADERS)
    return httpx.request(method, f"{server.url}{path}", timeout=60, **kwargs)


def reload(server: ServerProcess) -> httpx.Response:
    return admin(server, "POST", "/nbdeploy/reload")


def wait_for(
    condition: Callable[[], Any], timeout: float = 15.0, what: str = "the condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {timeout} s")


def stats(server: ServerProcess) -> dict[str, Any]:
    response = admin(server, "GET", "/nbdeploy/stats")
    assert response.status_code == 200, response.text
    return response.json()


def pair(server: ServerProcess, candidate: int) -> dict[str, Any]:
    [found] = [p for p in stats(server)["pairs"] if p["candidate"] == candidate]
    return found


# --- the routing file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown key(s) 'colour'"),
        ({"weights": {"1": 90}}, "sum to 90, not 100"),
        ({"stable": 2, "weights": {"1": 100}}, "'stable' version 2 is not a key of 'weights'"),
        ({"weights": {"1": 90, "9": 10}}, "names version 9"),
        ({"guards": {"version": 1, "min_agreement": 0.9, "colour": 1}}, "'guards.colour'"),
        ({"schema": 2}, "schema 1"),
    ],
)
def test_an_invalid_routing_file_exits_2_with_one_message(
    repository: Path, tmp_path: Path, change: dict[str, Any], message: str
):
    path = write_routing(routing_file(tmp_path), NAME, 1, {1: 100})
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    server = launch(repository, "--routing", str(path), log_path=tmp_path / "log", token=TOKEN)
    assert server.process.wait(60) == 2
    errors = [line for line in server.log().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and message in errors[0], server.log()
    assert str(path) in errors[0]


def test_a_missing_routing_file_exits_2(repository: Path, tmp_path: Path):
    missing = tmp_path / "nowhere.json"
    server = launch(repository, "--routing", str(missing), log_path=tmp_path / "log")
    assert server.process.wait(60) == 2
    assert f"the routing file {missing} does not exist" in server.log()


def test_a_version_that_fails_to_load_stops_the_start_with_its_reason(
    repository: Path, tmp_path: Path
):
    path = write_routing(routing_file(tmp_path), NAME, 1, {1: 100}, shadow=(CORRUPT,))
    server = launch(repository, "--routing", str(path), log_path=tmp_path / "log")
    assert server.process.wait(60) == 1
    assert f"cannot serve: version {CORRUPT} could not be loaded: onnxruntime cannot load" in (
        server.log()
    )


# --- weighted routing -------------------------------------------------------------------------


def test_unversioned_requests_split_exactly_by_weight(serve, repository: Path, tmp_path: Path):
    write_routing(routing_file(tmp_path), NAME, 1, {1: 90, DIFFERENT: 10})
    server = serve()
    client = server.client()
    x = rows(2)
    expected = {1: reference(repository, 1, x), DIFFERENT: reference(repository, DIFFERENT, x)}

    def one(_: int) -> int:
        response = infer(client, x)
        assert response.status_code == 200, response.text
        version = int(response.json()["model_version"])
        np.testing.assert_allclose(decode_response(response)["logits"], expected[version], 1e-5)
        return version

    with ThreadPoolExecutor(8) as pool:
        counts = Counter(pool.map(one, range(2000)))
    assert abs(counts[1] - 1800) <= 60 and abs(counts[DIFFERENT] - 200) <= 60, counts
    assert counts == {1: 1800, DIFFERENT: 200}  # smooth weighted round-robin is exact

    versioned = infer(client, x, version=DIFFERENT)
    assert versioned.json()["model_version"] == str(DIFFERENT)
    assert client.get(f"/v2/models/{NAME}").json()["parameters"]["version"] == "1"
    body = stats(server)
    assert body["versions"]["1"]["role"] == "stable" and body["versions"]["1"]["weight"] == 90
    assert body["versions"][str(DIFFERENT)]["role"] == "canary"
    assert body["versions"]["1"]["p50_ms"] > 0
    # every canary answer is mirrored to the stable version and compared with its answer
    found = wait_for(lambda: (p := pair(server, DIFFERENT))["compared"] == 400 and p)
    assert found["agreement"] is not None and found["candidate_errors"] == 0
    stable = stats(server)["versions"]["1"]
    assert stable["requests"] + stable["mirrored"] == 1024  # the window, not the history
    assert stable["mirrored"] > 0 and stable["dropped"] == 0


# --- shadows and compare stats ----------------------------------------------------------------


def test_a_shadow_is_compared_but_clients_get_the_stable_answers(
    serve, repository: Path, tmp_path: Path
):
    path = write_routing(routing_file(tmp_path), NAME, 1, {1: 100}, shadow=(DIFFERENT,))
    server = serve()
    client = server.client()
    batches = [rows(4, seed) for seed in range(30)]
    for x in batches:
        response = infer(client, x)
        assert response.json()["model_version"] == "1"
        np.testing.assert_allclose(
            decode_response(response)["logits"], reference(repository, 1, x), 1e-5
        )
    x_all = np.concatenate(batches)
    agree = np.argmax(reference(repository, 1, x_all), 1) == np.argmax(
        reference(repository, DIFFERENT, x_all), 1
    )
    found = wait_for(lambda: (p := pair(server, DIFFERENT))["compared"] == 120 and p, what="pairs")
    assert found["reference"] == 1 and found["kind"] == "top1"
    assert found["agreement"] == pytest.approx(agree.mean()) and found["agreement"] < 0.8
    assert found["max_abs_diff"] > 0.1 and found["candidate_errors"] == 0
    shadow = stats(server)["versions"][str(DIFFERENT)]
    assert shadow["role"] == "shadow" and shadow["weight"] == 0
    assert shadow["mirrored"] == 30 and shadow["requests"] == 0

    write_routing(path, NAME, 2, {1: 100}, shadow=(COPY,))
    assert reload(server).json()["loaded"] == [1, COPY]
    for x in batches[:10]:
        assert infer(client, x).json()["model_version"] == "1"
    same = wait_for(lambda: (p := pair(server, COPY))["compared"] == 40 and p, what="pairs")
    assert same["agreement"] == 1.0 and same["max_abs_diff"] == 0.0
    assert [p["candidate"] for p in stats(server)["pairs"]] == [COPY]


def test_a_failing_shadow_never_delays_or_fails_a_client(serve, repository: Path, tmp_path: Path):
    write_routing(routing_file(tmp_path), NAME, 1, {1: 100}, shadow=(FAILING,))
    server = serve()
    client = server.client()
    x = rows(3)
    for _ in range(25):
        response = infer(client, x)
        assert response.status_code == 200 and response.json()["model_version"] == "1"
        np.testing.assert_allclose(
            decode_response(response)["logits"], reference(repository, 1, x), 1e-5
        )
    found = wait_for(lambda: (p := pair(server, FAILING))["candidate_errors"] == 25 and p)
    assert found["compared"] == 0 and found["agreement"] is None
    failing = stats(server)["versions"][str(FAILING)]
    assert failing["errors"] == 25 and failing["mirrored"] == 25
    assert stats(server)["versions"]["1"]["errors"] == 0


# --- guards -----------------------------------------------------------------------------------


def test_a_disagreeing_canary_trips_its_guard_and_the_stable_takes_all(serve, tmp_path: Path):
    guards = {"version": DIFFERENT, "min_agreement": 0.99, "min_requests": 20}
    write_routing(routing_file(tmp_path), NAME, 4, {1: 50, DIFFERENT: 50}, guards=guards)
    server = serve()
    client = server.client()
    started = time.monotonic()

    def tripped() -> dict[str, Any] | None:
        infer(client, rows(4, seed=int(time.monotonic() * 1000) % 10_000))
        return admin(server, "GET", "/nbdeploy/routing").json()["tripped"]

    trip = wait_for(tripped, timeout=10, what="the guard trip")
    assert time.monotonic() - started < 5
    routing = admin(server, "GET", "/nbdeploy/routing").json()
    assert routing["weights"] == {"1": 100, str(DIFFERENT): 0}
    assert routing["loaded"] == [1, DIFFERENT] and routing["generation"] == 4
    assert trip["version"] == DIFFERENT and trip["generation"] == 4
    assert trip["reason"].startswith("agreement ") and "< min_agreement 0.99 over" in trip["reason"]
    assert trip["at"].endswith("+00:00")
    assert {infer(client, rows(2)).json()["model_version"] for _ in range(20)} == {"1"}
    assert stats(server)["versions"][str(DIFFERENT)]["role"] == "idle"
    assert "WARNING" in server.log() and "guard tripped" in server.log()


def test_a_guard_trip_outlives_a_crash_until_the_host_decides(serve, tmp_path: Path):
    """The routing file is the host's (read-only in a container): the server keeps its trip in
    ``--state-dir``, so a crash and restart before the host looks does not bring the rolled-back
    version back; a newer routing file (the host's decision) stands over it."""
    guards = {"version": DIFFERENT, "min_agreement": 0.99, "min_requests": 20}
    path = write_routing(routing_file(tmp_path), NAME, 4, {1: 50, DIFFERENT: 50}, guards=guards)
    state = tmp_path / "state"
    state.mkdir()
    server = serve("--state-dir", str(state))
    client = server.client()

    def tripped() -> dict[str, Any] | None:
        infer(client, rows(4, seed=int(time.monotonic() * 1000) % 10_000))
        return admin(server, "GET", "/nbdeploy/routing").json()["tripped"]

    trip = wait_for(tripped, timeout=10, what="the guard trip")
    server.process.kill()
    server.process.wait()

    again = serve("--state-dir", str(state))
    routing = admin(again, "GET", "/nbdeploy/routing").json()
    assert routing["tripped"] == trip
    assert routing["weights"] == {"1": 100, str(DIFFERENT): 0}
    assert {infer(again.client(), rows(2)).json()["model_version"] for _ in range(20)} == {"1"}
    assert "kept from before the restart" in again.log()

    write_routing(path, NAME, 5, {1: 50, DIFFERENT: 50})
    assert reload(again).status_code == 200
    again.process.kill()
    again.process.wait()
    third = serve("--state-dir", str(state))
    routing = admin(third, "GET", "/nbdeploy/routing").json()
    assert routing["tripped"] is None and routing["weights"] == {"1": 50, str(DIFFERENT): 50}
    third.stop()

    write_routing(path, NAME, 6, {1: 50, DIFFERENT: 50}, guards=guards)
    (state / "tripped.json").write_text("{not json")
    fourth = serve("--state-dir", str(state))
    assert admin(fourth, "GET", "/nbdeploy/routing").json()["tripped"] is None
    assert "ignoring the kept guard trip" in fourth.log()


# --- admin routes -----------------------------------------------------------------------------


def test_admin_routes_need_the_admin_token(serve, repository: Path, tmp_path: Path):
    write_routing(routing_file(tmp_path), NAME, 1, {1: 100})
    closed = serve(admin_token=None)
    for path in ("/nbdeploy/routing", "/nbdeploy/stats"):
        response = admin(closed, "GET", path)
        assert response.status_code == 404 and "error" in response.json()
    assert admin(closed, "POST", "/nbdeploy/reload").status_code == 404

    server = serve()
    assert admin(server, "GET", "/nbdeploy/routing", headers={}).status_code == 401
    wrong = admin(server, "GET", "/nbdeploy/routing", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "error" in wrong.json()
    inference = {"Authorization": f"Bearer {TOKEN}"}
    assert admin(server, "GET", "/nbdeploy/stats", headers=inference).status_code == 401
    assert admin(server, "POST", "/nbdeploy/reload", headers=inference).status_code == 401
    assert admin(server, "GET", "/nbdeploy/routing").json() == {
        "generation": 1,
        "name": NAME,
        "stable": 1,
        "weights": {"1": 100},
        "shadow": [],
        "guards": None,
        "loaded": [1],
        "tripped": None,
    }
    admin_on_infer = httpx.post(
        f"{server.url}/v2/models/{NAME}/infer", headers=ADMIN_HEADERS, json={"inputs": []}
    )
    assert admin_on_infer.status_code == 401

    plain = save_mlp(tmp_path / "plain" / NAME / "1", seed=1).parent.parent
    static = start_server(plain, log_path=tmp_path / "static.log", token=TOKEN, admin_token=ADMIN)
    try:
        assert admin(static, "GET", "/nbdeploy/routing").status_code == 404
        assert infer(static.client(), rows(1)).json()["model_version"] == "1"
    finally:
        static.stop()


# --- reloads and restarts ---------------------------------------------------------------------


def test_failed_reloads_leave_serving_untouched(serve, tmp_path: Path):
    path = write_routing(routing_file(tmp_path), NAME, 3, {1: 100})
    server = serve()
    client = server.client()
    before = admin(server, "GET", "/nbdeploy/routing").json()

    write_routing(path, NAME, 4, {1: 90, CORRUPT: 10})
    failed = reload(server)
    assert failed.status_code == 422
    assert failed.json()["error"].startswith(f"version {CORRUPT} could not be loaded: ")
    write_routing(path, NAME, 4, {1: 90, DIFFERENT: 5})
    invalid = reload(server)
    assert invalid.status_code == 400 and "sum to 95, not 100" in invalid.json()["error"]
    write_routing(path, NAME, 4, {1: 100}, colour="blue")
    assert "'colour'" in reload(server).json()["error"]
    write_routing(path, NAME, 2, {1: 50, DIFFERENT: 50})
    assert reload(server).status_code == 409
    write_routing(path, NAME, 3, {1: 50, DIFFERENT: 50})
    assert reload(server).json() == before  # the same generation is a no-op
    assert admin(server, "GET", "/nbdeploy/routing").json() == before
    assert {infer(client, rows(1)).json()["model_version"] for _ in range(10)} == {"1"}


def test_a_restart_brings_back_the_same_versions_and_weights(serve, tmp_path: Path):
    path = write_routing(routing_file(tmp_path), NAME, 1, {1: 100})
    server = serve()
    write_routing(path, NAME, 2, {1: 70, DIFFERENT: 30}, shadow=(COPY,))
    applied = reload(server)
    assert applied.status_code == 200, applied.text
    server.process.kill()
    server.process.wait()

    again = serve()
    routing = admin(again, "GET", "/nbdeploy/routing").json()
    assert routing == applied.json()
    assert routing["weights"] == {"1": 70, str(DIFFERENT): 30}
    assert routing["loaded"] == [1, DIFFERENT, COPY] and routing["shadow"] == [COPY]
    client = again.client()
    assert client.get(f"/v2/models/{NAME}").json()["versions"] == ["1", "2", "3"]
    counts = Counter(infer(client, rows(1)).json()["model_version"] for _ in range(10))
    assert counts == {"1": 7, str(DIFFERENT): 3}


def test_reloads_under_load_fail_no_request(serve, repository: Path, tmp_path: Path):
    path = write_routing(routing_file(tmp_path), NAME, 1, {1: 100})
    server = serve()
    stop = threading.Event()
    seen: Counter[str] = Counter()
    failures: list[str] = []
    x = rows(2)

    def loop() -> None:
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
            while not stop.is_set():
                response = infer(client, x)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")
                    continue
                seen[response.json()["model_version"]] += 1

    threads = [threading.Thread(target=loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        steps = [
            ({1: 100, DIFFERENT: 0}, 1),
            ({1: 90, DIFFERENT: 10}, 1),
            ({1: 0, DIFFERENT: 100}, DIFFERENT),
            ({DIFFERENT: 100}, DIFFERENT),
        ]
        for generation, (weights, stable) in enumerate(steps, start=2):
            time.sleep(0.4)
            write_routing(path, NAME, generation, weights, stable=stable)
            response = reload(server)
            assert response.status_code == 200, response.text
            assert response.json()["generation"] == generation
        time.sleep(0.4)
        before = seen[str(DIFFERENT)]
        wait_for(lambda: seen[str(DIFFERENT)] > before + 20, what="traffic on v2")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert seen["1"] > 0 and seen[str(DIFFERENT)] > 0
    assert admin(server, "GET", "/nbdeploy/routing").json()["loaded"] == [DIFFERENT]
    assert "v1 unloaded" in server.log()
    expected = reference(repository, DIFFERENT, x)
    np.testing.assert_allclose(decode_response(infer(server.client(), x))["logits"], expected, 1e-5)
