"""The inference server over real HTTP: V2 routes, codecs, versions, batching, auth, shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from nbdeploy.serve.cpus import available_cpus, cgroup_cpu_quota
from tests.helpers.serve import (
    FIXED_WEIGHT,
    IDENTITY_TYPES,
    MLP_LABELS,
    PROJECT_ROOT,
    ServerProcess,
    binary_body,
    build_repository,
    decode_response,
    launch,
    metric_samples,
    metric_value,
    metrics_text,
    reference,
    save_mlp,
    save_slow,
    save_slow_mlp,
    start_server,
)

TOKEN = "test-token-123"
ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7 - 1


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("serve-repo"))


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("serve-logs")
    running = start_server(repository, log_path=logs / "server.log", token=TOKEN)
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> httpx.Client:
    return server.client()


def json_input(name: str, datatype: str, array: np.ndarray) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.tolist()}


def infer_json(client: httpx.Client, model: str, inputs: list[dict], **extra) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})


# --- routes and metadata ---------------------------------------------------------------------


def test_server_metadata_and_health_are_open(server: ServerProcess):
    meta = httpx.get(f"{server.url}/v2").json()
    assert meta["name"] == "nbdeploy"
    assert meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    ready = httpx.get(f"{server.url}/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_model_metadata_reports_signature_versions_and_labels(client: httpx.Client):
    meta = client.get("/v2/models/mlp").json()
    assert meta["name"] == "mlp"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "probs", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert meta["parameters"]["labels"] == MLP_LABELS
    assert meta["parameters"]["input_kind"] == "tabular"
    assert meta["parameters"]["version"] == "2"
    assert meta["parameters"]["dynamic_batching"] is True
    assert client.get("/v2/models/mlp/versions/1").json()["parameters"]["version"] == "1"

    pair = client.get("/v2/models/pair").json()
    assert [(t["name"], t["datatype"]) for t in pair["inputs"]] == [
        ("a", "FP32"),
        ("b", "INT64"),
        ("flag", "BOOL"),
    ]
    assert [(t["name"], t["datatype"]) for t in pair["outputs"]] == [
        ("total", "FP32"),
        ("doubled", "INT64"),
        ("positive", "BOOL"),
    ]
    text = client.get("/v2/models/text").json()
    assert text["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    types = client.get("/v2/models/types").json()
    assert {t["datatype"] for t in types["inputs"]} == set(IDENTITY_TYPES)
    assert all(t["shape"] == [-1, -1] for t in types["inputs"])
    fixed = client.get("/v2/models/fixed").json()
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]
    assert fixed["parameters"]["dynamic_batching"] is False


def test_only_integer_version_directories_with_a_model_are_served(client: httpx.Client):
    assert client.get("/v2/models/mlp/versions/notes").status_code == 404
    assert client.get("/v2/models/no-versions").status_code == 404


def test_model_ready_routes(client: httpx.Client):
    ready = client.get("/v2/models/mlp/ready")
    assert ready.status_code == 200
    assert ready.json() == {"name": "mlp", "version": "2", "ready": True}
    assert client.get("/v2/models/mlp/versions/1/ready").json()["version"] == "1"
    assert client.get("/v2/models/missing/ready").status_code == 404


# --- inference -------------------------------------------------------------------------------


def test_json_infer_equals_onnxruntime_in_process(client: httpx.Client, repository: Path):
    x = ROWS[:3]
    response = infer_json(client, "mlp", [json_input("x", "FP32", x)], id="req-7")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == "mlp"
    assert body["model_version"] == "2"
    assert body["id"] == "req-7"
    assert [o["name"] for o in body["outputs"]] == ["logits", "probs"]
    expected = reference(repository, "mlp", 2, {"x": x})
    got = decode_response(response)
    for name in ("logits", "probs"):
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], expected[name])


def test_flat_and_nested_json_data_are_the_same_tensor(client: httpx.Client):
    x = ROWS[:2]
    flat = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.reshape(-1).tolist()}
    nested = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.tolist()}
    a = decode_response(infer_json(client, "mlp", [flat]))
    b = decode_response(infer_json(client, "mlp", [nested]))
    np.testing.assert_array_equal(a["logits"], b["logits"])


def test_versions_default_to_highest_and_explicit_routes_pick_one(
    client: httpx.Client, repository: Path
):
    x = ROWS[:2]
    inputs = {"inputs": [json_input("x", "FP32", x)]}
    v1 = client.post("/v2/models/mlp/versions/1/infer", json=inputs)
    v2 = client.post("/v2/models/mlp/versions/2/infer", json=inputs)
    default = client.post("/v2/models/mlp/infer", json=inputs)
    assert v1.json()["model_version"] == "1"
    assert default.json()["model_version"] == "2"
    np.testing.assert_array_equal(
        decode_response(v1)["logits"], reference(repository, "mlp", 1, {"x": x})["logits"]
    )
    np.testing.assert_array_equal(decode_response(default)["logits"], decode_response(v2)["logits"])
    assert not np.allclose(decode_response(v1)["logits"], decode_response(v2)["logits"])


def test_binary_request_and_binary_response(client: httpx.Client, repository: Path):
    x = ROWS[:4]
    body, headers = binary_body(
        [("x", "FP32", x)],
        outputs=[
            {"name": "probs", "parameters": {"binary_data": True}},
            {"name": "logits", "parameters": {"binary_data": True}},
        ],
    )
    response = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["probs", "logits"]
    assert all("data" not in o for o in header["outputs"])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 4 * 3 * 4
    assert len(response.content) == length + 2 * 4 * 3 * 4
    expected = reference(repository, "mlp", 2, {"x": x})
    got = decode_response(response)
    np.testing.assert_array_equal(got["probs"], expected["probs"])
    np.testing.assert_array_equal(got["logits"], expected["logits"])


def test_output_subset_and_mixed_json_binary_outputs(client: httpx.Client, repository: Path):
    x = ROWS[:2]
    expected = reference(repository, "mlp", 2, {"x": x})
    only = infer_json(client, "mlp", [json_input("x", "FP32", x)], outputs=[{"name": "probs"}])
    assert [o["name"] for o in only.json()["outputs"]] == ["probs"]
    np.testing.assert_array_equal(decode_response(only)["probs"], expected["probs"])

    body, headers = binary_body(
        [("x", "FP32", x)],
        outputs=[
            {"name": "logits", "parameters": {"binary_data": False}},
            {"name": "probs", "parameters": {"binary_data": True}},
        ],
    )
    mixed = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    length = int(mixed.headers["inference-header-content-length"])
    header = json.loads(mixed.content[:length])
    assert "data" in header["outputs"][0] and "data" not in header["outputs"][1]
    got = decode_response(mixed)
    np.testing.assert_array_equal(got["logits"], expected["logits"])
    np.testing.assert_array_equal(got["probs"], expected["probs"])


def test_binary_data_output_parameter_makes_every_output_binary(client: httpx.Client):
    x = ROWS[:1]
    response = infer_json(
        client, "mlp", [json_input("x", "FP32", x)], parameters={"binary_data_output": True}
    )
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [12, 12]
    overridden = infer_json(
        client,
        "mlp",
        [json_input("x", "FP32", x)],
        parameters={"binary_data_output": True},
        outputs=[{"name": "probs", "parameters": {"binary_data": False}}, {"name": "logits"}],
    )
    length = int(overridden.headers["inference-header-content-length"])
    outputs = json.loads(overridden.content[:length])["outputs"]
    assert "data" in outputs[0] and outputs[1]["parameters"]["binary_data_size"] == 12


def test_int64_bool_and_multiple_inputs_in_json_and_binary(client: httpx.Client):
    a = np.array([[1.5, -2.0, 0.0], [3.0, 0.25, -1.0]], dtype=np.float32)
    b = np.array([[1, 2, -3], [2**40, 0, 7]], dtype=np.int64)
    flag = np.array([[True, True, False], [True, False, True]])
    expected = {
        "total": a + b.astype(np.float32),
        "doubled": b * 2,
        "positive": flag & (a > 0),
    }
    as_json = infer_json(
        client,
        "pair",
        [json_input("a", "FP32", a), json_input("b", "INT64", b), json_input("flag", "BOOL", flag)],
    )
    body, headers = binary_body(
        [("a", "FP32", a), ("b", "INT64", b), ("flag", "BOOL", flag)],
        parameters={"binary_data_output": True},
    )
    as_binary = client.post("/v2/models/pair/infer", content=body, headers=headers)
    for response in (as_json, as_binary):
        assert response.status_code == 200, response.text
        got = decode_response(response)
        for name, want in expected.items():
            assert got[name].dtype == want.dtype, name
            np.testing.assert_array_equal(got[name], want)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_numeric_datatype_round_trips(client: httpx.Client, binary: bool):
    arrays = {}
    for datatype, dtype in IDENTITY_TYPES.items():
        info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
        arrays[datatype] = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    names = {datatype: datatype.lower() for datatype in IDENTITY_TYPES}
    if binary:
        body, headers = binary_body(
            [(f"in_{names[dt]}", dt, array) for dt, array in arrays.items()],
            parameters={"binary_data_output": True},
        )
        response = client.post("/v2/models/types/infer", content=body, headers=headers)
    else:
        response = infer_json(
            client,
            "types",
            [json_input(f"in_{names[dt]}", dt, array) for dt, array in arrays.items()],
        )
    assert response.status_code == 200, response.text
    body_outputs = {o["name"]: o for o in _header(response)["outputs"]}
    got = decode_response(response)
    for datatype, array in arrays.items():
        name = f"out_{names[datatype]}"
        assert body_outputs[name]["datatype"] == datatype
        assert got[name].dtype == array.dtype
        np.testing.assert_array_equal(got[name], array)


def test_bytes_model_in_json_and_binary(client: httpx.Client):
    words = np.array(["Hello", "WORLD", "", "MiXeD ÄÖ"], dtype=object)
    lower = ["hello", "world", "", "mixed äö"]
    as_json = infer_json(client, "text", [json_input("text", "BYTES", words)])
    body, headers = binary_body([("text", "BYTES", words)], parameters={"binary_data_output": True})
    as_binary = client.post("/v2/models/text/infer", content=body, headers=headers)
    for response in (as_json, as_binary):
        assert response.status_code == 200, response.text
        got = decode_response(response)
        assert got["lower"].tolist() == lower
        assert got["same"].tolist() == words.tolist()
    assert _header(as_json)["outputs"][0]["data"] == lower


def test_fixed_batch_model_infers(client: httpx.Client):
    x = ROWS[:1]
    got = decode_response(infer_json(client, "fixed", [json_input("x", "FP32", x)]))
    np.testing.assert_allclose(got["y"], x @ FIXED_WEIGHT, rtol=1e-6)


def test_non_tensor_outputs_are_left_out(client: httpx.Client):
    meta = client.get("/v2/models/zipmap").json()
    assert [o["name"] for o in meta["outputs"]] == ["probs"]
    x = ROWS[:2, :3]
    response = infer_json(client, "zipmap", [json_input("x", "FP32", x)])
    assert [o["name"] for o in response.json()["outputs"]] == ["probs"]
    np.testing.assert_array_equal(decode_response(response)["probs"], x)


# --- tritonclient ----------------------------------------------------------------------------


def test_tritonclient_http_with_binary_data(server: ServerProcess, repository: Path):
    import tritonclient.http as triton

    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")

    # tritonclient writes Inference-Header-Content-Length into the headers dict it is given,
    # so every call gets a fresh one.
    def headers() -> dict[str, str]:
        return dict(server.headers)

    try:
        assert triton_client.is_server_live()
        assert triton_client.is_server_ready()
        assert triton_client.is_model_ready("mlp", headers=headers())
        assert triton_client.get_model_metadata("mlp", headers=headers())["versions"] == ["1", "2"]

        x = ROWS[:5]
        tensor = triton.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        outputs = [triton.InferRequestedOutput("logits", binary_data=True)]
        result = triton_client.infer(
            "mlp", [tensor], outputs=outputs, headers=headers(), request_id="t-1"
        )
        expected = reference(repository, "mlp", 2, {"x": x})
        np.testing.assert_array_equal(result.as_numpy("logits"), expected["logits"])
        assert result.as_numpy("probs") is None
        assert result.get_response()["id"] == "t-1"

        everything = triton_client.infer("mlp", [tensor], model_version="1", headers=headers())
        np.testing.assert_array_equal(
            everything.as_numpy("probs"), reference(repository, "mlp", 1, {"x": x})["probs"]
        )

        tensor.set_data_from_numpy(x, binary_data=False)
        as_json = triton_client.infer(
            "mlp",
            [tensor],
            outputs=[triton.InferRequestedOutput("probs", binary_data=False)],
            headers=headers(),
        )
        np.testing.assert_allclose(as_json.as_numpy("probs"), expected["probs"], rtol=1e-6)

        top = triton_client.infer(
            "mlp",
            [tensor],
            outputs=[triton.InferRequestedOutput("probs", class_count=2)],
            headers=headers(),
        ).as_numpy("probs")
        assert top.shape == (5, 2)
        for row, probs in zip(top, expected["probs"], strict=True):
            best, second = np.argsort(-probs)[:2]
            score, position, label = row[0].decode().split(":")
            assert (int(position), label) == (best, MLP_LABELS[best])
            assert float(score) == pytest.approx(float(probs[best]), abs=1e-6)
            assert int(row[1].decode().split(":")[1]) == second

        words = np.array([b"ABC", "Dé".encode()], dtype=object)
        text = triton.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(words, binary_data=True)
        lower = triton_client.infer("text", [text], headers=headers()).as_numpy("lower")
        assert [w.decode() for w in lower] == ["abc", "dé"]

        gzipped = triton_client.infer(
            "mlp", [tensor], headers=headers(), request_compression_algorithm="gzip"
        )
        np.testing.assert_array_equal(gzipped.as_numpy("logits"), expected["logits"])
    finally:
        triton_client.close()


# --- dynamic batching ------------------------------------------------------------------------


def _fire(server: ServerProcess, requests: list[tuple[str, dict]]) -> list[httpx.Response]:
    """Send all requests at once from as many threads, released together by a barrier."""
    barrier = threading.Barrier(len(requests))

    def send(item: tuple[str, dict]) -> httpx.Response:
        path, payload = item
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
            barrier.wait()
            return c.post(path, json=payload)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def _batch_stats(server: ServerProcess, model: str, version: str) -> tuple[float, float, float]:
    """(runs, requests, runs of exactly one request) so far for one model version."""
    text = metrics_text(server)
    labels = {"model": model, "version": version}
    return (
        metric_value(text, "nbdeploy_batch_requests_count", **labels),
        metric_value(text, "nbdeploy_batch_requests_sum", **labels),
        metric_value(text, "nbdeploy_batch_requests_bucket", le="1.0", **labels),
    )


@pytest.fixture(scope="module")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow-repo")
    save_slow_mlp(root / "slow" / "1")
    return root


@pytest.fixture(scope="module")
def slow_server(slow_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("slow-logs")
    running = start_server(slow_repository, log_path=logs / "server.log", token=TOKEN)
    yield running
    running.stop()


def test_concurrent_requests_are_merged_and_answered_correctly(
    slow_server: ServerProcess, slow_repository: Path
):
    """A model whose runs take milliseconds runs on its thread; requests that come while it
    runs wait in the queue and share the next run."""
    rng = np.random.default_rng(0)
    merged = False
    for _ in range(5):
        before = _batch_stats(slow_server, "slow", "1")
        rows = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(32)]
        responses = _fire(
            slow_server,
            [("/v2/models/slow/infer", {"inputs": [json_input("x", "FP32", x)]}) for x in rows],
        )
        for x, response in zip(rows, responses, strict=True):
            assert response.status_code == 200, response.text
            expected = reference(slow_repository, "slow", 1, {"x": x})
            np.testing.assert_allclose(decode_response(response)["probs"], expected["probs"], 1e-5)
        after = _batch_stats(slow_server, "slow", "1")
        runs, requests = after[0] - before[0], after[1] - before[1]
        assert requests == 32
        if runs < requests:
            merged = True
            break
    assert merged, "32 concurrent requests never shared an onnxruntime run"


def test_a_quick_model_answers_each_request_at_once(server: ServerProcess, repository: Path):
    """Runs of a few microseconds are not worth a queue: concurrent requests to the small mlp
    each run alone, inline, without waiting, and are all answered correctly."""
    rng = np.random.default_rng(1)
    before = _batch_stats(server, "mlp", "2")
    rows = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(32)]
    responses = _fire(
        server, [("/v2/models/mlp/infer", {"inputs": [json_input("x", "FP32", x)]}) for x in rows]
    )
    for x, response in zip(rows, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = reference(repository, "mlp", 2, {"x": x})
        np.testing.assert_allclose(decode_response(response)["probs"], expected["probs"], 1e-5)
    after = _batch_stats(server, "mlp", "2")
    runs, requests, alone = (a - b for a, b in zip(after, before, strict=True))
    assert requests == 32
    assert runs == requests == alone


def test_requests_with_different_shapes_are_never_merged(server: ServerProcess):
    payloads = []
    for i in range(24):
        width = 1 + i % 3
        array = np.full((1, width), i, dtype=np.int32)
        payloads.append(
            {
                "inputs": [
                    json_input(f"in_{dt.lower()}", dt, array.astype(IDENTITY_TYPES[dt]))
                    for dt in IDENTITY_TYPES
                ]
            }
        )
    responses = _fire(server, [("/v2/models/types/infer", p) for p in payloads])
    for i, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert decode_response(response)["out_int32"].tolist() == [[i] * (1 + i % 3)]
    assert "a merged batch" not in server.log()


def test_fixed_batch_model_is_never_batched(server: ServerProcess):
    before = _batch_stats(server, "fixed", "1")
    x = {"inputs": [json_input("x", "FP32", ROWS[:1])]}
    responses = _fire(server, [("/v2/models/fixed/infer", x)] * 16)
    assert all(r.status_code == 200 for r in responses)
    after = _batch_stats(server, "fixed", "1")
    assert after[0] - before[0] == 16
    assert after[2] - before[2] == 16


# --- metrics and auth ------------------------------------------------------------------------


def test_metrics_count_requests_by_route_and_status(server: ServerProcess, client: httpx.Client):
    client.get("/v2/models/mlp")
    client.get("/v2/models/unknown-model")
    text = metrics_text(server)
    assert text.count("# TYPE nbdeploy_") >= 7
    infer_ok = metric_value(
        text,
        "nbdeploy_http_requests_total",
        method="POST",
        route="/v2/models/{model}/infer",
        status="200",
    )
    assert infer_ok >= 10
    assert (
        metric_value(text, "nbdeploy_http_requests_total", route="/v2/models/{model}", status="404")
        >= 1
    )
    assert not metric_samples(
        text, "nbdeploy_http_requests_total", route="/v2/models/unknown-model"
    )
    assert (
        metric_value(
            text, "nbdeploy_http_request_duration_seconds_count", route="/v2/models/{model}/infer"
        )
        >= infer_ok
    )
    assert metric_value(text, "nbdeploy_queue_duration_seconds_count", model="mlp") >= 10
    assert metric_value(text, "nbdeploy_batch_size_sum", model="mlp", version="2") >= 10
    assert metric_value(text, "nbdeploy_inference_duration_seconds_count", model="pair") >= 1
    assert metric_samples(text, "nbdeploy_pending_requests", model="mlp", version="2")


def test_bearer_token_guards_model_routes_only(server: ServerProcess):
    url = server.url
    payload = {"inputs": [json_input("x", "FP32", ROWS[:1])]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        for response in (
            httpx.post(f"{url}/v2/models/mlp/infer", json=payload, headers=headers),
            httpx.get(f"{url}/v2/models/mlp", headers=headers),
            httpx.get(f"{url}/v2/models/mlp/versions/1/ready", headers=headers),
        ):
            assert response.status_code == 401
            assert "error" in response.json()
            assert response.headers["www-authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(f"{url}/v2/models/mlp/infer", json=payload, headers=good).status_code == 200
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{url}{path}").status_code == 200


def test_request_log_has_one_line_per_request(server: ServerProcess, client: httpx.Client):
    client.get("/v2/models/mlp/versions/2")
    line = '"GET /v2/models/mlp/versions/2 HTTP/1.1" 200 '
    deadline = time.monotonic() + 30
    while line not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    matching = [entry for entry in server.log().splitlines() if line in entry]
    assert len(matching) == 1
    assert " INFO " in matching[0] and matching[0].endswith("ms")
    log = server.log()
    assert "listening on http://127.0.0.1:" in log
    cpus = len(os.sched_getaffinity(0))
    assert f"onnxruntime: {cpus} intra-op threads per session ({cpus} usable CPUs)" in log
    assert "dynamic batching: up to 32 rows, waiting at most 2.0 ms" in log
    assert "loaded mlp v2" in log and "ready: 7 model version(s)" in log


# --- other servers ---------------------------------------------------------------------------


def test_no_batching_default_version_and_no_token(repository: Path, tmp_path: Path):
    server = start_server(
        repository,
        "--no-batching",
        "--default-version",
        "1",
        "--threads",
        "1",
        log_path=tmp_path / "log",
    )
    try:
        assert "onnxruntime: 1 intra-op threads per session" in server.log()
        meta = httpx.get(f"{server.url}/v2/models/mlp").json()
        assert meta["parameters"]["dynamic_batching"] is False
        assert meta["parameters"]["version"] == "1"
        responses = _fire(
            server,
            [
                ("/v2/models/mlp/infer", {"inputs": [json_input("x", "FP32", ROWS[i : i + 1])]})
                for i in range(6)
            ]
            * 4,
        )
        assert {r.status_code for r in responses} == {200}
        assert {r.json()["model_version"] for r in responses} == {"1"}
        runs, requests, singles = _batch_stats(server, "mlp", "1")
        assert runs == requests == singles == 24
    finally:
        assert server.stop() == 0


def test_a_lone_client_never_waits_for_a_batch_to_fill(repository: Path, tmp_path: Path):
    """Batching adapts: with nobody else sending, the queue delay is not spent waiting."""
    server = start_server(repository, "--max-queue-delay-ms", "5000", log_path=tmp_path / "log")
    try:
        for i in range(5):
            response = httpx.post(
                f"{server.url}/v2/models/mlp/infer",
                json={"inputs": [json_input("x", "FP32", ROWS[i : i + 1])]},
                headers=server.headers,
                timeout=60,
            )
            assert response.status_code == 200, response.text
        text = metrics_text(server)
        waited = metric_value(text, "nbdeploy_queue_duration_seconds_sum", model="mlp")
        assert metric_value(text, "nbdeploy_queue_duration_seconds_count", model="mlp") == 5
        assert waited < 1.0, f"5 sequential requests spent {waited:.2f} s queued"
    finally:
        assert server.stop() == 0


def test_sigterm_lets_an_in_flight_request_finish_and_exits_zero(tmp_path: Path):
    """A request still computing when SIGTERM arrives gets its full answer; exit status 0."""
    repository = tmp_path / "repo"
    save_slow(repository / "slow" / "1")
    server = start_server(repository, log_path=tmp_path / "log", token=TOKEN)
    x = ROWS[:1]
    outcome: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        outcome["response"] = httpx.post(
            f"{server.url}/v2/models/slow/infer",
            json={"inputs": [json_input("x", "FP32", x)]},
            headers=server.headers,
            timeout=60,
        )

    sender = threading.Thread(target=slow_request)
    sender.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pending = metric_value(metrics_text(server), "nbdeploy_pending_requests", model="slow")
        if pending == 1:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the request never reached the model")
    server.process.send_signal(signal.SIGTERM)
    sender.join(60)
    assert server.process.wait(60) == 0, server.log()
    response = outcome["response"]
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(
        decode_response(response)["y"], reference(repository, "slow", 1, {"x": x})["y"], rtol=1e-6
    )
    log = server.log()
    assert "received SIGTERM" in log
    assert log.index("received SIGTERM") < log.index('"POST /v2/models/slow/infer HTTP/1.1" 200')


def test_readiness_is_503_until_models_are_loaded(tmp_path: Path):
    repository = tmp_path / "repo"
    save_slow(repository / "slow" / "1")
    server = launch(repository, log_path=tmp_path / "log")
    statuses: list[int] = []
    early_infer: list[httpx.Response] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and statuses[-1:] != [200]:
            assert server.process.poll() is None, server.log()
            try:
                statuses.append(httpx.get(f"{server.url}/v2/health/ready").status_code)
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            if statuses[-1] == 503 and not early_infer:
                assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
                early_infer.append(
                    httpx.post(
                        f"{server.url}/v2/models/slow/infer",
                        json={"inputs": [json_input("x", "FP32", ROWS[:1])]},
                    )
                )
        assert statuses[-1] == 200
        assert statuses[0] == 503, statuses
        assert statuses == sorted(statuses, reverse=True)
        assert early_infer[0].status_code == 503
        assert "loading" in early_infer[0].json()["error"]
    finally:
        assert server.stop() == 0


def test_served_alone_from_a_copy_with_an_empty_package(repository: Path, tmp_path: Path):
    root = tmp_path / "image-app"
    (root / "nbdeploy").mkdir(parents=True)
    (root / "nbdeploy" / "__init__.py").write_text("")
    shutil.copytree(
        PROJECT_ROOT / "nbdeploy" / "serve",
        root / "nbdeploy" / "serve",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys, nbdeploy.serve.server; "
            "print(json.dumps([nbdeploy.serve.__file__, sorted(sys.modules)]))",
        ],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    where, modules = json.loads(probe.stdout)
    assert where.startswith(str(root))
    ours = [m for m in modules if m.split(".")[0] == "nbdeploy"]
    assert ours and all(m == "nbdeploy" or m.startswith("nbdeploy.serve") for m in ours)
    top_level = {m.split(".")[0] for m in modules}
    for heavy in ("torch", "tensorflow", "onnx", "IPython", "ipywidgets", "jupyter_server"):
        assert heavy not in top_level

    server = start_server(
        repository, log_path=tmp_path / "log", pythonpath=root, cwd=root, token=TOKEN
    )
    try:
        assert f"from {root}/nbdeploy/serve" in server.log()
        body, headers = binary_body([("x", "FP32", ROWS[:2])])
        response = httpx.post(
            f"{server.url}/v2/models/mlp/infer",
            content=body,
            headers={**headers, **server.headers},
        )
        assert response.status_code == 200, response.text
    finally:
        assert server.stop() == 0


def test_start_up_failures_exit_non_zero_with_a_message(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    (broken / "m" / "1").mkdir(parents=True)
    (broken / "m" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    versioned = tmp_path / "versioned"
    save_mlp(versioned / "mlp" / "1", seed=1)
    cases = [
        (tmp_path / "missing", [], 2, "is not a directory"),
        (empty, [], 2, "holds no models"),
        (versioned, ["--default-version", "9"], 2, "--default-version 9 does not exist"),
        (broken, [], 1, "cannot load"),
    ]
    servers = [
        launch(repo, *args, log_path=tmp_path / f"log{index}")
        for index, (repo, args, _, _) in enumerate(cases)
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = launch(versioned, log_path=tmp_path / "busy", port=taken.getsockname()[1])
        assert busy.process.wait(60) == 3, busy.log()
    assert "address already in use" in busy.log()
    for server, (_, _, code, message) in zip(servers, cases, strict=True):
        assert server.process.wait(60) == code, server.log()
        assert message in server.log()


def _header(response: httpx.Response) -> dict:
    length = response.headers.get("inference-header-content-length")
    return json.loads(response.content if length is None else response.content[: int(length)])


# --- CPU sizing ------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_takes_the_tightest_level(tmp_path: Path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    _write(proc, "0::/app.slice/model\n")
    _write(root / "app.slice" / "model" / "cpu.max", "150000 100000\n")
    _write(root / "app.slice" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert available_cpus(root, proc) == 1
    _write(root / "app.slice" / "cpu.max", "50000 100000\n")
    assert cgroup_cpu_quota(root, proc) == 0.5
    assert available_cpus(root, proc) == 1


def test_cgroup_v1_quota_in_the_containers_own_mount(tmp_path: Path):
    root, proc = tmp_path / "cgroup", tmp_path / "proc-cgroup"
    _write(proc, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "400000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(root, proc) == 4.0
    assert available_cpus(root, proc) == min(4, len(os.sched_getaffinity(0)))
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_the_affinity_mask(tmp_path: Path):
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None
    assert available_cpus(tmp_path, tmp_path / "missing") == len(os.sched_getaffinity(0))
