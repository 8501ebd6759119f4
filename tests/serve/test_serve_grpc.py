"""V2 over gRPC against a real server process: tritonclient.grpc unchanged, typed and raw
contents, auth, errors as status codes, and the same batching, limits and metrics as HTTP."""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from nbdeploy.serve.grpc_service import decode_request
from tests.helpers.serve import (
    MLP_LABELS,
    ServerProcess,
    build_repository,
    free_port,
    launch,
    metric_value,
    reference,
    save_mlp,
    save_slow,
    start_server,
)

TOKEN = "grpc-token-456"
AUTH = {"authorization": f"Bearer {TOKEN}"}
METADATA = (("authorization", f"Bearer {TOKEN}"),)
ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7 - 1
SLOW_RUN_ITERATIONS = 1_200_000  # about a second per run


class GrpcServer:
    """A server process and the address of its gRPC port."""

    def __init__(self, process: ServerProcess, grpc_port: int) -> None:
        self.process = process
        self.address = f"127.0.0.1:{grpc_port}"

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.address)

    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(self.address))

    def metrics(self) -> str:
        return httpx.get(f"{self.process.url}/metrics", timeout=30).text


def start_grpc_server(repository: Path, *args: str, log_path: Path, **kwargs) -> GrpcServer:
    port = free_port()
    process = start_server(repository, "--grpc-port", str(port), *args, log_path=log_path, **kwargs)
    return GrpcServer(process, port)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("grpc-repo"))


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("grpc-logs")
    running = start_grpc_server(
        repository, "--max-queue-delay-ms", "50", log_path=logs / "server.log", token=TOKEN
    )
    yield running
    assert running.process.stop() == 0, running.process.log()


@pytest.fixture(scope="module")
def client(server: GrpcServer) -> grpcclient.InferenceServerClient:
    return server.client()


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


def triton_status(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


# --- health and metadata ---------------------------------------------------------------------


def test_health_and_server_metadata_are_open(client: grpcclient.InferenceServerClient):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "nbdeploy" and meta["version"]
    assert "classification" in meta["extensions"]


def test_model_metadata_and_readiness(client: grpcclient.InferenceServerClient):
    meta = client.get_model_metadata("mlp", headers=AUTH, as_json=True)
    assert meta["name"] == "mlp"
    assert meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]
    assert client.get_model_metadata("mlp", "1", headers=AUTH).name == "mlp"
    assert client.is_model_ready("mlp", headers=AUTH)
    assert client.is_model_ready("mlp", "1", headers=AUTH)
    code, message = triton_status(lambda: client.get_model_metadata("nope", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND" and "unknown model 'nope'" in message
    code, message = triton_status(lambda: client.is_model_ready("mlp", "7", headers=AUTH))
    assert code == "StatusCode.NOT_FOUND" and "no version '7'" in message


def test_the_token_is_required_on_model_calls(client: grpcclient.InferenceServerClient):
    x = infer_input("x", ROWS, "FP32")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        code, message = triton_status(lambda h=headers: client.infer("mlp", [x], headers=h))
        assert code == "StatusCode.UNAUTHENTICATED", (headers, message)
        assert "token" in message.lower()
        code, _ = triton_status(lambda h=headers: client.get_model_metadata("mlp", headers=h))
        assert code == "StatusCode.UNAUTHENTICATED"
        code, _ = triton_status(lambda h=headers: client.is_model_ready("mlp", headers=h))
        assert code == "StatusCode.UNAUTHENTICATED"


# --- inference ---------------------------------------------------------------------------------


def test_infer_fp32_matches_onnxruntime(repository: Path, client: grpcclient.InferenceServerClient):
    result = client.infer("mlp", [infer_input("x", ROWS, "FP32")], headers=AUTH, request_id="r-1")
    expected = reference(repository, "mlp", 2, {"x": ROWS})
    np.testing.assert_allclose(result.as_numpy("logits"), expected["logits"], rtol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probs"), expected["probs"], rtol=1e-5)
    response = result.get_response()
    assert response.model_name == "mlp" and response.model_version == "2"
    assert response.id == "r-1"
    assert len(response.raw_output_contents) == 2  # always raw, as Triton answers

    older = client.infer(
        "mlp",
        [infer_input("x", ROWS, "FP32")],
        model_version="1",
        headers=AUTH,
        outputs=[grpcclient.InferRequestedOutput("probs")],
    )
    assert older.get_response().model_version == "1"
    assert [o.name for o in older.get_response().outputs] == ["probs"]
    np.testing.assert_allclose(
        older.as_numpy("probs"), reference(repository, "mlp", 1, {"x": ROWS})["probs"], rtol=1e-5
    )


def test_infer_bytes(client: grpcclient.InferenceServerClient):
    words = np.array(["HeLLo", "Wörld", "", "ÉCOLE"], dtype=object)
    result = client.infer("text", [infer_input("text", words, "BYTES")], headers=AUTH)
    assert [v.decode() for v in result.as_numpy("lower")] == ["hello", "wörld", "", "école"]
    assert [v.decode() for v in result.as_numpy("same")] == list(words)


def test_infer_several_datatypes(repository: Path, client: grpcclient.InferenceServerClient):
    a = np.array([[1.5, -2.0, 0.0]], dtype=np.float32)
    b = np.array([[1, 2, -3]], dtype=np.int64)
    flag = np.array([[True, False, True]])
    result = client.infer(
        "pair",
        [
            infer_input("a", a, "FP32"),
            infer_input("b", b, "INT64"),
            infer_input("flag", flag, "BOOL"),
        ],
        headers=AUTH,
    )
    expected = reference(repository, "pair", 1, {"a": a, "b": b, "flag": flag})
    for name in ("total", "doubled", "positive"):
        np.testing.assert_array_equal(result.as_numpy(name), expected[name])
    half = np.array([[0.5, -1.25]], dtype=np.float16)
    types = {
        "in_fp16": (half, "FP16"),
        "in_fp64": (np.array([[1e300, -2.5]]), "FP64"),
        "in_int8": (np.array([[-128, 127]], dtype=np.int8), "INT8"),
        "in_int16": (np.array([[-300, 300]], dtype=np.int16), "INT16"),
        "in_int32": (np.array([[-(2**31), 5]], dtype=np.int32), "INT32"),
        "in_uint8": (np.array([[0, 255]], dtype=np.uint8), "UINT8"),
        "in_uint16": (np.array([[0, 65535]], dtype=np.uint16), "UINT16"),
        "in_uint32": (np.array([[0, 2**32 - 1]], dtype=np.uint32), "UINT32"),
        "in_uint64": (np.array([[0, 2**64 - 1]], dtype=np.uint64), "UINT64"),
    }
    inputs = [infer_input(name, array, datatype) for name, (array, datatype) in types.items()]
    result = client.infer("types", inputs, headers=AUTH)
    for name, (array, _) in types.items():
        out = result.as_numpy(name.replace("in_", "out_"))
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_classification(client: grpcclient.InferenceServerClient):
    result = client.infer(
        "mlp",
        [infer_input("x", ROWS[:2], "FP32")],
        headers=AUTH,
        outputs=[grpcclient.InferRequestedOutput("probs", class_count=2)],
    )
    top = result.as_numpy("probs")
    assert top.shape == (2, 2)
    score, index, label = top[0, 0].decode().split(":")
    assert 0 <= float(score) <= 1 and label == MLP_LABELS[int(index)]


def typed_request(model: str, *tensors) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape, field, values in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents(repository: Path, server: GrpcServer):
    """Clients other than tritonclient (KServe's, hand-written ones) send typed contents."""
    stub = server.stub()
    request = typed_request(
        "pair",
        ("a", "FP32", [2, 3], "fp32_contents", [1.0, 2.0, 3.0, -1.0, -2.0, -3.0]),
        ("b", "INT64", [2, 3], "int64_contents", [1, 2, 3, 4, 5, 6]),
        ("flag", "BOOL", [2, 3], "bool_contents", [True] * 6),
    )
    response = stub.ModelInfer(request, metadata=METADATA)
    assert [o.name for o in response.outputs] == ["total", "doubled", "positive"]
    total = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(total, [[2, 4, 6], [3, 3, 3]])
    positive = np.frombuffer(response.raw_output_contents[2], dtype=np.bool_).reshape(2, 3)
    np.testing.assert_array_equal(positive, [[True] * 3, [False] * 3])

    words = typed_request("text", ("text", "BYTES", [2], "bytes_contents", [b"AbC", "Ü".encode()]))
    response = stub.ModelInfer(words, metadata=METADATA)
    raw = response.raw_output_contents[0]
    assert raw == b"\x03\x00\x00\x00abc\x02\x00\x00\x00" + "ü".encode()


def test_typed_contents_of_every_datatype_decode_exactly():
    fields = {
        "BOOL": ("bool_contents", [True, False], np.bool_),
        "INT8": ("int_contents", [-128, 127], np.int8),
        "INT16": ("int_contents", [-300, 300], np.int16),
        "INT32": ("int_contents", [-(2**31), 7], np.int32),
        "INT64": ("int64_contents", [-(2**63), 2**40], np.int64),
        "UINT8": ("uint_contents", [0, 255], np.uint8),
        "UINT16": ("uint_contents", [0, 65535], np.uint16),
        "UINT32": ("uint_contents", [0, 2**32 - 1], np.uint32),
        "UINT64": ("uint64_contents", [0, 2**64 - 1], np.uint64),
        "FP32": ("fp32_contents", [0.5, -1e30], np.float32),
        "FP64": ("fp64_contents", [0.1, 1e300], np.float64),
    }
    request = typed_request(
        "m", *[(name, name, [1, 2], field, values) for name, (field, values, _) in fields.items()]
    )
    request.inputs.add(name="s", datatype="BYTES", shape=[2]).contents.bytes_contents.extend(
        [b"a", "é".encode()]
    )
    decoded = decode_request(request)
    for name, (_, values, dtype) in fields.items():
        array = decoded.inputs[name]
        assert array.dtype == np.dtype(dtype) and array.shape == (1, 2)
        np.testing.assert_array_equal(array, np.array([values], dtype=dtype))
        assert decoded.datatypes[name] == name
    assert decoded.inputs["s"].tolist() == ["a", "é"]  # str, as the HTTP decoder gives
    assert decoded.outputs is None and decoded.id is None


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (typed_request("mlp"), "at least one input"),
        (
            typed_request("mlp", ("x", "FP32", [1, 4], "fp32_contents", [1.0, 2.0])),
            "holds 2",
        ),
        (
            typed_request("mlp", ("x", "FP32", [1, 4], "int_contents", [1, 2, 3, 4])),
            "contents.fp32_contents",
        ),
        (
            typed_request("mlp", ("x", "FP64", [1, 4], "fp64_contents", [1.0] * 4)),
            "expects datatype FP32",
        ),
        (
            typed_request("mlp", ("x", "FP32", [1, 3], "fp32_contents", [1.0] * 3)),
            "expects shape [-1, 4]",
        ),
        (
            typed_request("mlp", ("x", "FLOAT", [1, 4], "fp32_contents", [1.0] * 4)),
            "supported datatypes",
        ),
        (
            typed_request("types", ("in_int8", "INT8", [1, 1], "int_contents", [300])),
            "outside the INT8 range",
        ),
        (
            typed_request("text", ("text", "BYTES", [1], "bytes_contents", [b"\xff"])),
            "not valid UTF-8",
        ),
        (
            typed_request("mlp", ("x", "FP32", [1, 4], "fp32_contents", [1.0, 2, 3, float("nan")])),
            "NaN",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(server: GrpcServer, request_, expected: str):
    code, message = status_of(lambda: server.stub().ModelInfer(request_, metadata=METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, message
    assert expected in message


def test_raw_contents_that_do_not_add_up(server: GrpcServer):
    stub = server.stub()
    request = service_pb2.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(np.zeros(7, dtype=np.float32).tobytes())
    code, message = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "32 bytes" in message

    request.raw_input_contents.append(b"")
    code, message = status_of(lambda: stub.ModelInfer(request, metadata=METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents holds 2" in message

    words = service_pb2.ModelInferRequest(model_name="text")
    words.inputs.add(name="text", datatype="BYTES", shape=[1])
    words.raw_input_contents.append(b"\x09\x00\x00\x00abc")
    code, message = status_of(lambda: stub.ModelInfer(words, metadata=METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "declares 9 bytes" in message

    unknown = service_pb2.ModelInferRequest(model_name="mlp")
    unknown.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    unknown.raw_input_contents.append(np.zeros(4, dtype=np.float32).tobytes())
    unknown.outputs.add(name="nope")
    code, message = status_of(lambda: stub.ModelInfer(unknown, metadata=METADATA))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no output 'nope'" in message

    unknown.model_name = "nope"
    code, message = status_of(lambda: stub.ModelInfer(unknown, metadata=METADATA))
    assert code == grpc.StatusCode.NOT_FOUND and "unknown model" in message


def test_other_methods_are_unimplemented(server: GrpcServer):
    code, _ = status_of(
        lambda: server.stub().ModelStatistics(
            service_pb2.ModelStatisticsRequest(name="mlp"), metadata=METADATA
        )
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED


# --- one data plane: batching and metrics shared with HTTP ---------------------------------


def test_concurrent_calls_are_batched_and_counted(server: GrpcServer):
    before = server.metrics()
    calls = 24
    client = server.client()
    done: queue.Queue = queue.Queue()
    # a big request keeps the model busy, so the small calls queue and are merged
    big = np.ones((500_000, 4), dtype=np.float32)
    client.async_infer(
        "mlp",
        [infer_input("x", big, "FP32")],
        lambda result, error: done.put((result, error)),
        headers=AUTH,
    )
    time.sleep(0.01)
    for index in range(calls):  # all in flight at once on one channel
        rows = ROWS[index % 6 : index % 6 + 1]
        client.async_infer(
            "mlp",
            [infer_input("x", rows, "FP32")],
            lambda result, error: done.put((result, error)),
            headers=AUTH,
        )
    answers = [done.get(timeout=60) for _ in range(calls + 1)]
    assert all(error is None for _, error in answers), answers
    shapes = sorted(result.as_numpy("probs").shape for result, _ in answers)
    assert shapes == [(1, 3)] * calls + [(500_000, 3)]
    client.close()
    after = server.metrics()

    def grown(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    answered = calls + 1
    assert grown("nbdeploy_grpc_requests_total", method="ModelInfer", code="OK") == answered
    assert (
        grown("nbdeploy_model_requests_total", model="mlp", version="2", outcome="ok") == answered
    )
    runs = grown("nbdeploy_batch_requests_count", model="mlp", version="2")
    merged = grown("nbdeploy_batch_requests_sum", model="mlp", version="2")
    assert merged == answered and runs < calls, (runs, merged)
    assert grown("nbdeploy_grpc_request_duration_seconds_count", method="ModelInfer") == answered
    assert "gRPC ModelInfer" in server.process.log()


def test_http_and_grpc_answer_alike(server: GrpcServer, client: grpcclient.InferenceServerClient):
    http = httpx.post(
        f"{server.process.url}/v2/models/mlp/infer",
        json={
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [6, 4], "data": ROWS.ravel().tolist()}
            ]
        },
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ).json()
    result = client.infer("mlp", [infer_input("x", ROWS, "FP32")], headers=AUTH)
    by_name = {out["name"]: np.array(out["data"], dtype=np.float32) for out in http["outputs"]}
    np.testing.assert_array_equal(by_name["logits"].reshape(6, 3), result.as_numpy("logits"))


def test_a_taken_grpc_port_fails_the_start(server: GrpcServer, repository: Path, tmp_path: Path):
    port = int(server.address.rsplit(":", 1)[1])
    second = launch(
        repository, "--grpc-port", str(port), log_path=tmp_path / "server.log", token=TOKEN
    )
    try:
        assert second.process.wait(60) == 3
    finally:
        second.stop()
    assert "address already in use" in second.log()


# --- limits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("grpc-limits-repo")
    save_slow(root / "slow" / "1", iterations=SLOW_RUN_ITERATIONS)
    save_mlp(root / "mlp" / "1", seed=1)
    running = start_grpc_server(
        root,
        "--max-concurrency",
        "3",
        "--request-timeout-s",
        "2.5",
        "--no-batching",
        "--memory-budget-bytes",
        str(4 << 20),
        "--max-body-bytes",
        str(8 << 20),
        log_path=tmp_path_factory.mktemp("grpc-limits-logs") / "server.log",
    )
    yield running
    assert running.process.stop() == 0, running.process.log()


def test_concurrency_limit_and_deadline(limited: GrpcServer):
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)

    def call(_: int) -> str:
        client = limited.client()
        try:
            client.infer("slow", [infer_input("x", x, "FP32")])
            return "OK"
        except InferenceServerException as exc:
            return f"{exc.status()} {exc.message()}"
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(call, range(8)))
    codes = {outcome.split(" ", 1)[0] for outcome in outcomes}
    assert codes <= {"OK", "StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"}, outcomes
    # (on an idle machine the first call is also answered; a loaded one may run it too slowly)
    assert {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"} <= codes, outcomes
    for outcome in outcomes:
        if outcome.startswith("StatusCode.UNAVAILABLE"):
            assert "--max-concurrency" in outcome
        if outcome.startswith("StatusCode.DEADLINE_EXCEEDED"):
            assert "--request-timeout-s" in outcome
    time.sleep(3)  # let the run still going end before the next test
    assert limited.client().is_server_ready()


def test_memory_budget_and_message_size(limited: GrpcServer):
    client = limited.client()
    big = np.zeros((200_000, 4), dtype=np.float32)  # 3.2 MB in, 4.8 MB out: over 4 MiB
    code, message = triton_status(lambda: client.infer("mlp", [infer_input("x", big, "FP32")]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    assert "--memory-budget-bytes" in message
    huge = np.zeros((600_000, 4), dtype=np.float32)  # 9.6 MB: over --max-body-bytes
    code, message = triton_status(lambda: client.infer("mlp", [infer_input("x", huge, "FP32")]))
    assert code == "StatusCode.RESOURCE_EXHAUSTED"
    small = client.infer("mlp", [infer_input("x", big[:1000], "FP32")])
    assert small.as_numpy("probs").shape == (1000, 3)


def test_a_client_deadline_leaves_the_server_serving(limited: GrpcServer):
    client = limited.client()
    x = np.array([[1, 2, 3, 4]], dtype=np.float32)
    code, _ = triton_status(
        lambda: client.infer("slow", [infer_input("x", x, "FP32")], client_timeout=0.2)
    )
    assert code == "StatusCode.DEADLINE_EXCEEDED"
    time.sleep(1.5)
    assert client.infer("mlp", [infer_input("x", x, "FP32")]).as_numpy("probs").shape == (1, 3)
